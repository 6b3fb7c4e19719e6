# The tidegate worker (and CLI) image: `docker compose up` builds it; deploy/worker.yaml runs it.
FROM python:3.11-slim
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 TIDEGATE_METRICS_PORT=9464
WORKDIR /app
COPY pyproject.toml ./
COPY deploy_models.py worker.py starter.py payload_codec.py ./
COPY workflows ./workflows
COPY activities ./activities
COPY sandbox ./sandbox
RUN pip install --no-cache-dir .
USER 65532:65532
# The worker's Prometheus metrics (the Temporal SDK's and tidegate's own): --metrics-port.
EXPOSE 9464
ENTRYPOINT ["python", "worker.py"]
