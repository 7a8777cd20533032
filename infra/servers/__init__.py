"""The MLflow and Prefect servers on Postgres, natively (`make up`/`make down`, i.e.
`python -m infra.servers up|down|status|env`) and inside the containers of docker-compose.yml
(`python -m infra.servers exec mlflow|prefect`, `mlflow-setup`). Import from the modules; this package
re-exports nothing.

Modules, bottom to top:

- `settings`: `Settings` (ports, databases, credentials, each process's command and environment) read from
  the environment and `.env`; the secrets and who gets which; `read_env_file`/`write_env_file`; `QUIET`;
  `ServerError`.
- `processes`: `Managed` (a process with a pid file and a log, started in its own session, stopped with its
  workers), `wait_until`, `port_open`, `http_ok`.
- `postgres`: create and drop the servers' databases.
- `health`: whether MLflow and Prefect answer, and whether the deployments are registered.
- `mlflow_users`: the runner's non-admin MLflow user and its access to the factory's models and experiments.
- `dask_cluster`: `up --dask`'s scheduler and workers.
- `redis_server`: `up`'s Redis (the model server's real-time feature state).
- `stack`: `up`, `down`, `status`, the containers' `exec_server` and `discard_stack`: the order of things.
- `__main__`: the command line.
"""
