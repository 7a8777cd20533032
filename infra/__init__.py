"""Server mode: Prefect deployments as code (`infra.deployments`) and the MLflow/Prefect servers
(`infra.servers`, used by `make up`/`make down` and, inside containers, by docker-compose.yml)."""
