#!/usr/bin/env python3
"""Get a token with the real azure-identity for one of the pod's identities, picked by name.

The environment is a container's, as the wif webhook injected it (AZURE_CLIENT_ID,
AZURE_TENANT_ID, AZURE_FEDERATED_TOKEN_FILE, AZURE_AUTHORITY_HOST and AZURE_CLIENT_ID_<NAME> for
each named identity), plus SSL_CERT_FILE for the emulator's CA. WIF_IDENTITY names the identity
("" = the container's AZURE_CLIENT_ID). Prints the access token's claims as one JSON line.
"""

import base64
import json
import os
import sys


def main():
    from azure.identity import WorkloadIdentityCredential

    name = os.environ.get("WIF_IDENTITY", "")
    kwargs = {}
    if name:
        # What application code does: the identity by name, never by GUID.
        kwargs["client_id"] = os.environ["AZURE_CLIENT_ID_" + name.upper().replace("-", "_")]
    scope = os.environ.get("WIF_CHECK_SCOPE", "https://management.azure.com/.default")
    with WorkloadIdentityCredential(**kwargs) as credential:
        token = credential.get_token(scope)
    payload = token.token.split(".")[1]
    payload += "=" * (-len(payload) % 4)
    claims = json.loads(base64.urlsafe_b64decode(payload))
    print(json.dumps({k: claims.get(k) for k in ("appid", "oid", "aud", "tid")}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
