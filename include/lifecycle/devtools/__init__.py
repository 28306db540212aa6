"""For development and demos only, never imported by the engine rooms: the local
SendGrid-compatible sink, seeding, the demo, simulated engagement, `airflow standalone`
and previews."""
