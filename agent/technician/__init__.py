"""On-site tools for technicians: install check, status, bind, pause, end-of-service reset."""
