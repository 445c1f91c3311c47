"""Response-centre side: dispenser events -> FHIR R4 bundles for the patient record (VKP).

Needs the `centre` extra (fhir.resources); the unit never imports this package. See
`agent.fhir.convert` for the mapping and docs/response-centre-guide.md for its table.
"""
