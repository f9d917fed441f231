# The image the KubeRay manifests run: the official Ray image of the same Ray version,
# with this project and the CUDA build of vLLM installed.
FROM rayproject/ray:2.60.0-py311-gpu

WORKDIR /home/ray/platform
COPY --chown=ray:users requirements.txt requirements-cuda.txt ./
RUN pip install --no-cache-dir -r requirements.txt -r requirements-cuda.txt

COPY --chown=ray:users . .
# Streaming-friendly Ray Serve settings (common/serve_env.py), for every Ray process in the pod.
ENV RAY_worker_niceness=0 \
    RAY_SERVE_RUN_USER_CODE_IN_SEPARATE_THREAD=0 \
    RAY_SERVE_RUN_ROUTER_IN_SEPARATE_LOOP=0 \
    RAY_SERVE_REQUEST_PATH_LOG_BUFFER_SIZE=1000 \
    PLATFORM_STREAM_INTERVAL_MS=10 \
    PYTHONPATH=/home/ray/platform

EXPOSE 8000
CMD ["python", "deploy_app.py", "--config", "examples/production.yaml"]
