#!/usr/bin/env bash
# Prints the image `sam local` should run the function in (stdout); progress goes to stderr.
#
# 1. $SAM_LOCAL_IMAGE, when set.
# 2. AWS's public.ecr.aws/lambda/python:3.12, when it is present or can be pulled.
# 3. Otherwise a stand-in built here once and cached under a tag that carries a
#    hash of its recipe (this script and the files in image/), so editing the
#    recipe builds a new image and an unchanged recipe never rebuilds.
#
# The stand-in is NOT Amazon Linux 2023: it is a Debian bookworm root from
# debootstrap, CPython 3.12 from pyenv under /var/lang, awslambdaric from PyPI
# under /var/runtime, and the ENV/WORKDIR/ENTRYPOINT of AWS's python3.12 image.
# SAM adds its own Runtime Interface Emulator on top, as it does for AWS's image.
set -euo pipefail

HERE=$(cd "$(dirname "$0")" && pwd)
AWS_IMAGE=public.ecr.aws/lambda/python:3.12
PULL_TIMEOUT_SECONDS=${SAM_LOCAL_PULL_TIMEOUT:-20}
PYTHON_VERSION=3.12.1
AWSLAMBDARIC_VERSION=4.2.2
SUITE=bookworm
# Shared libraries pyenv's CPython links against (ldd of bin/ and lib-dynload/),
# minus Tk; ca-certificates so a CRM reached over https can be verified.
PACKAGES=libssl3,libffi8,libsqlite3-0,libreadline8,libncursesw6,libexpat1,libnsl2,libtirpc3,libgssapi-krb5-2,ca-certificates
TAG_REPOSITORY=post-call-push/lambda-python-standin

say() { echo "sam-local: $*" >&2; }

if [ -n "${SAM_LOCAL_IMAGE:-}" ]; then
    echo "$SAM_LOCAL_IMAGE"
    exit 0
fi

if docker image inspect "$AWS_IMAGE" >/dev/null 2>&1; then
    say "using AWS's $AWS_IMAGE (already pulled)"
    echo "$AWS_IMAGE"
    exit 0
fi
if timeout "$PULL_TIMEOUT_SECONDS" docker pull -q "$AWS_IMAGE" >/dev/null 2>&1; then
    say "using AWS's $AWS_IMAGE (pulled)"
    echo "$AWS_IMAGE"
    exit 0
fi

recipe_hash=$(
    {
        cat "$0" "$HERE/image/bootstrap" "$HERE/image/lambda-entrypoint.sh"
        uname -m
    } | sha256sum | cut -c1-12
)
tag=$TAG_REPOSITORY:3.12-$recipe_hash
if docker image inspect "$tag" >/dev/null 2>&1; then
    say "$AWS_IMAGE cannot be pulled here; using the cached stand-in $tag"
    echo "$tag"
    exit 0
fi

python_prefix=${PYENV_ROOT:-$HOME/.pyenv}/versions/$PYTHON_VERSION
if [ ! -x "$python_prefix/bin/python3.12" ]; then
    say "no CPython $PYTHON_VERSION at $python_prefix (pyenv install $PYTHON_VERSION), and $AWS_IMAGE cannot be pulled"
    exit 1
fi
mirror=$(grep -hoE '^URIs: *https?://[^ ]+/debian$' /etc/apt/sources.list.d/*.sources 2>/dev/null | head -n1 | sed 's/^URIs: *//')
mirror=${mirror:-http://deb.debian.org/debian}

say "$AWS_IMAGE cannot be pulled here; building the stand-in $tag (Debian $SUITE + CPython $PYTHON_VERSION + awslambdaric $AWSLAMBDARIC_VERSION)"
started=$SECONDS
work=$(mktemp -d /var/tmp/sam-local-image.XXXXXX)
trap 'rm -rf "$work"' EXIT
root=$work/root

debootstrap --variant=minbase --include="$PACKAGES" "$SUITE" "$root" "$mirror" >"$work/debootstrap.log" 2>&1 || {
    tail -n 30 "$work/debootstrap.log" >&2
    exit 1
}
say "debootstrap done ($((SECONDS - started)) s)"

mkdir -p "$root/var/lang" "$root/var/runtime" "$root/var/task" "$root/opt"
# The test suite is 40% of the interpreter's size and never imported by a function.
tar -C "$python_prefix" --exclude=./lib/python3.12/test -cf - . | tar -C "$root/var/lang" -xf -
# pip & co. were installed with pyenv's path in their shebangs.
grep -rlI "^#!$python_prefix/bin/" "$root/var/lang/bin" | while read -r script; do
    sed -i "1s|^#!$python_prefix/bin/|#!/var/lang/bin/|" "$script"
done
"$python_prefix/bin/python3.12" -m pip install -q --disable-pip-version-check --no-warn-script-location --root-user-action=ignore \
    --target "$root/var/runtime" "awslambdaric==$AWSLAMBDARIC_VERSION" 2> >(grep -v '^WARNING: Location' >&2)
echo /var/runtime >"$root/var/lang/lib/python3.12/site-packages/zz-lambda-runtime.pth"
install -m 0755 "$HERE/image/bootstrap" "$root/var/runtime/bootstrap"
install -m 0755 "$HERE/image/lambda-entrypoint.sh" "$root/lambda-entrypoint.sh"
rm -rf "$root"/var/cache/apt/archives/*.deb "$root"/var/lib/apt/lists/* "$root"/usr/share/doc "$root"/usr/share/man

# The ENV, WORKDIR and ENTRYPOINT of AWS's python3.12 Dockerfile.
tar -C "$root" -cf - . | docker import \
    --change 'ENV LANG=en_US.UTF-8' \
    --change 'ENV TZ=:/etc/localtime' \
    --change 'ENV PATH=/var/lang/bin:/usr/local/bin:/usr/bin/:/bin:/opt/bin' \
    --change 'ENV LD_LIBRARY_PATH=/var/lang/lib:/lib64:/usr/lib64:/var/runtime:/var/runtime/lib:/var/task:/var/task/lib:/opt/lib' \
    --change 'ENV LAMBDA_TASK_ROOT=/var/task' \
    --change 'ENV LAMBDA_RUNTIME_DIR=/var/runtime' \
    --change 'WORKDIR /var/task' \
    --change 'ENTRYPOINT ["/lambda-entrypoint.sh"]' \
    --change "LABEL org.opencontainers.image.description=stand-in-for-$AWS_IMAGE recipe=$recipe_hash" \
    - "$tag" >/dev/null
say "built $tag in $((SECONDS - started)) s ($(docker image inspect -f '{{.Size}}' "$tag" | awk '{printf "%d MB", $1 / 1e6}'))"
echo "$tag"
