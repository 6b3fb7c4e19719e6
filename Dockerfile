# The tidegate worker (and CLI) image.
FROM python:3.11-slim
WORKDIR /app
COPY pyproject.toml ./
COPY deploy_models.py worker.py starter.py ./
COPY workflows ./workflows
COPY activities ./activities
COPY sandbox ./sandbox
RUN pip install --no-cache-dir .
USER 65532:65532
ENTRYPOINT ["python", "worker.py"]
