# Sourced by the Dockerfile's download steps: pip trusts the build machine's CA bundle when the
# build was given it as the secret pip_ca (scripts/build_image.sh), else its own.
if [ -s /run/secrets/pip_ca ]; then
  export PIP_CERT=/run/secrets/pip_ca
fi
