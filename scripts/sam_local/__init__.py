"""`make sam-local`: the function under `sam local`, in a Lambda container, against the local stack."""
