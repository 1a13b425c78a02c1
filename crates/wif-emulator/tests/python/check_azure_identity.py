#!/usr/bin/env python3
"""Get tokens from the wif emulator with the real, unmodified azure-identity.

Environment, as the wif webhook injects it into a pod, plus the emulator's CA:

  AZURE_AUTHORITY_HOST        the emulator's base URL (e.g. https://127.0.0.1:8443/)
  AZURE_TENANT_ID             tenant id
  AZURE_CLIENT_ID             application appId or user-assigned identity clientId
  AZURE_FEDERATED_TOKEN_FILE  file holding the federated (service account) token
  SSL_CERT_FILE, REQUESTS_CA_BUNDLE   the emulator's ca.pem
  WIF_CHECK_SCOPE             optional, default https://management.azure.com/.default

Uses WorkloadIdentityCredential and DefaultAzureCredential (azure-identity builds the token URL
itself and makes no discovery call), then MSAL's ConfidentialClientApplication with the same
assertion (MSAL asks the emulator's instance discovery, `GET /common/discovery/instance`, then reads
the tenant's OpenID configuration, so both discovery documents are exercised too). Prints each access token's decoded claims as JSON and exits 0 only if every one
is a token issued by the emulator for this tenant, client and scope.
"""

import base64
import json
import os
import sys
import time

REQUIRED = (
    "AZURE_AUTHORITY_HOST",
    "AZURE_TENANT_ID",
    "AZURE_CLIENT_ID",
    "AZURE_FEDERATED_TOKEN_FILE",
)


def decode_claims(token):
    payload = token.split(".")[1]
    payload += "=" * (-len(payload) % 4)
    return json.loads(base64.urlsafe_b64decode(payload))


def check(name, credential, scope):
    token = credential.get_token(scope)
    return check_token(name, token.token, token.expires_on, scope)


def check_token(name, access_token, expires_on, scope):
    tenant = os.environ["AZURE_TENANT_ID"]
    client = os.environ["AZURE_CLIENT_ID"]
    authority = os.environ["AZURE_AUTHORITY_HOST"].rstrip("/")
    claims = decode_claims(access_token)
    print(
        json.dumps(
            {"credential": name, "expires_on": expires_on, "claims": claims},
            indent=2,
            sort_keys=True,
        )
    )
    expected = {
        "aud": scope[: -len("/.default")],
        "tid": tenant,
        "appid": client,
        "iss": "{}/{}/v2.0".format(authority, tenant),
    }
    problems = [
        "{}: claim {} is {!r}, expected {!r}".format(name, key, claims.get(key), want)
        for key, want in expected.items()
        if claims.get(key) != want
    ]
    if expires_on <= time.time():
        problems.append("{}: token already expired".format(name))
    return problems


def check_msal(scope):
    import msal

    with open(os.environ["AZURE_FEDERATED_TOKEN_FILE"], encoding="utf-8") as f:
        assertion = f.read()
    app = msal.ConfidentialClientApplication(
        os.environ["AZURE_CLIENT_ID"],
        client_credential={"client_assertion": assertion},
        authority="{}/{}".format(os.environ["AZURE_AUTHORITY_HOST"].rstrip("/"), os.environ["AZURE_TENANT_ID"]),
        # By default MSAL validates an authority it does not know at login.microsoftonline.com;
        # pointed at the emulator's own instance discovery it asks the emulator instead, then
        # reads the tenant's OpenID configuration there.
        instance_discovery="{}/common/discovery/instance".format(os.environ["AZURE_AUTHORITY_HOST"].rstrip("/")),
    )
    result = app.acquire_token_for_client(scopes=[scope])
    if "access_token" not in result:
        return ["msal.ConfidentialClientApplication: {}".format(json.dumps(result))]
    expires_on = time.time() + int(result.get("expires_in", 0))
    return check_token("msal.ConfidentialClientApplication", result["access_token"], expires_on, scope)


def main():
    missing = [name for name in REQUIRED if not os.environ.get(name)]
    if missing:
        print("missing environment: " + ", ".join(missing), file=sys.stderr)
        return 2
    from azure.identity import DefaultAzureCredential, WorkloadIdentityCredential

    scope = os.environ.get("WIF_CHECK_SCOPE", "https://management.azure.com/.default")
    failures = []
    candidates = (
        ("WorkloadIdentityCredential", WorkloadIdentityCredential),
        ("DefaultAzureCredential", DefaultAzureCredential),
    )
    for name, factory in candidates:
        try:
            with factory() as credential:
                failures.extend(check(name, credential, scope))
        except Exception as error:  # report every credential's failure, not just the first
            failures.append("{}: {}: {}".format(name, type(error).__name__, error))
    try:
        failures.extend(check_msal(scope))
    except Exception as error:
        failures.append("msal.ConfidentialClientApplication: {}: {}".format(type(error).__name__, error))
    for failure in failures:
        print("FAIL " + failure, file=sys.stderr)
    if failures:
        return 1
    print("OK: WorkloadIdentityCredential, DefaultAzureCredential and MSAL got tokens from the emulator")
    return 0


if __name__ == "__main__":
    sys.exit(main())
