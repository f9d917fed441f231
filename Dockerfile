# The image the KubeRay manifests run: the official Ray image of the same Ray version,
# with this project and the CUDA build of vLLM installed.
FROM rayproject/ray:2.60.0-py311-gpu

WORKDIR /home/ray/platform
COPY --chown=ray:users requirements.txt requirements-cuda.txt ./
RUN pip install --no-cache-dir -r requirements.txt -r requirements-cuda.txt

COPY --chown=ray:users . .
# raylet reads the worker niceness and Serve's HAProxy manager the HAProxy to run (scripts/haproxy:
# splicing off); the replica-side settings of common/serve_env.py reach the replicas through each
# deployment's runtime_env, added by the builder.
ENV RAY_worker_niceness=0 \
    RAY_SERVE_HAPROXY_BINARY_PATH=/home/ray/platform/scripts/haproxy \
    PYTHONPATH=/home/ray/platform

EXPOSE 8000
CMD ["python", "deploy_app.py", "--config", "examples/production.yaml"]
