#!/bin/sh
# Entry point of the stand-in image, as in AWS's base images: the handler is the
# only argument. `sam local` does not use it (it starts its own emulator); it is
# here so `docker run <image> app.lambda_handler` behaves like the real image
# where an emulator is installed at /usr/local/bin/aws-lambda-rie.
if [ $# -ne 1 ]; then
    echo "entrypoint requires the handler name to be the first argument" >&2
    exit 142
fi
export _HANDLER="$1"
if [ -n "${AWS_LAMBDA_RUNTIME_API:-}" ]; then
    exec /var/runtime/bootstrap
fi
if [ -x /usr/local/bin/aws-lambda-rie ]; then
    exec /usr/local/bin/aws-lambda-rie /var/runtime/bootstrap
fi
echo "this stand-in image has no Runtime Interface Emulator: run it through sam local" >&2
exit 1
