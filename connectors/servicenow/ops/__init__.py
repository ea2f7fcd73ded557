"""What operators see: Prometheus metrics (``metrics``), the handoff
transition lines and the recorder the rest reports to (``observe``), JSON
logs (``logs``). The doctor (``python -m connectors.servicenow.doctor``)
lives in its own package for its public module path."""
