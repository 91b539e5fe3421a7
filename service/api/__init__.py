"""HTTP controllers, one module per resource: jobs, files, models, health."""
