#!/usr/bin/env python3
"""Drive the wif emulator with the real, unmodified Azure SDKs for Python.

  check_sdks.py arm    azure-mgmt-msi: federated credentials of a user-assigned identity
  check_sdks.py graph  msgraph-sdk: federated credentials of an application

Each run does create / get / list (with paging) / delete, then the error cases, and checks that
the SDK itself parsed each error into the exception and code the real service gives. Prints one
`ok <what>` line per check and exits 0 only if all passed; a failure prints `FAIL <what>: …`.

Environment (set by the Rust test, crates/wif-emulator/tests/azure_clients.rs):

  WIF_BASE            the emulator's base URL (https://127.0.0.1:PORT)
  AZURE_TENANT_ID     tenant id
  AZURE_CLIENT_ID     client id of an application with a federated credential for the token
  AZURE_FEDERATED_TOKEN_FILE   a token from the test issuer
  WIF_SUBSCRIPTION, WIF_RESOURCE_GROUP, WIF_IDENTITY   (arm) an existing identity
  WIF_APP_OBJECT_ID, WIF_APP_ID                         (graph) an existing application
  WIF_FOREIGN_TOKEN   an emulator token for another audience (401 check)
  SSL_CERT_FILE, REQUESTS_CA_BUNDLE   the emulator's ca.pem
"""

import asyncio
import os
import sys
import threading

from azure.identity import WorkloadIdentityCredential

ISSUER = "https://issuer.example.com/sdk"
AUDIENCE = "api://AzureADTokenExchange"
FAILURES = []


def check(what, condition, detail=""):
    if condition:
        print("ok " + what, flush=True)
    else:
        FAILURES.append(what)
        print("FAIL {}: {}".format(what, detail), flush=True)


def expect_error(what, call, exception_type, status, code):
    """Runs `call`, which must raise `exception_type` with this HTTP status and service code."""
    try:
        call()
    except exception_type as error:
        got_status, got_code = error_status_and_code(error)
        check(
            "{} -> {} {} {}".format(what, exception_type.__name__, status, code),
            got_status == status and got_code == code,
            "got {} {} {!r}: {}".format(type(error).__name__, got_status, got_code, error),
        )
        return error
    except Exception as error:  # the wrong exception type is a failure, not a crash
        check(what, False, "raised {}: {}".format(type(error).__name__, error))
        return None
    check(what, False, "no error raised")
    return None


def error_status_and_code(error):
    # azure-core HttpResponseError: status_code + error.code (parsed ARM CloudError).
    if hasattr(error, "status_code") and hasattr(error, "error"):
        code = getattr(error.error, "code", None) if error.error is not None else None
        return error.status_code, code
    # kiota APIError / msgraph ODataError: response_status_code + error.code (parsed OData error).
    main = getattr(error, "error", None)
    return getattr(error, "response_status_code", None), getattr(main, "code", None)


def credential():
    return WorkloadIdentityCredential(
        tenant_id=os.environ["AZURE_TENANT_ID"],
        client_id=os.environ["AZURE_CLIENT_ID"],
        token_file_path=os.environ["AZURE_FEDERATED_TOKEN_FILE"],
        authority=os.environ["WIF_BASE"] + "/",
    )


class StaticToken:
    """A credential returning a fixed token (for the wrong-audience check)."""

    def __init__(self, token):
        self.token = token

    def get_token(self, *scopes, **kwargs):
        from azure.core.credentials import AccessToken

        return AccessToken(self.token, 2**31 - 1)


# === ARM: azure-mgmt-msi ========================================================================


def run_arm():
    from azure.core.exceptions import (
        ClientAuthenticationError,
        HttpResponseError,
        ResourceExistsError,
        ResourceNotFoundError,
    )
    from azure.mgmt.msi import ManagedServiceIdentityClient
    from azure.mgmt.msi.models import FederatedIdentityCredential

    base = os.environ["WIF_BASE"]
    sub = os.environ["WIF_SUBSCRIPTION"]
    rg = os.environ["WIF_RESOURCE_GROUP"]
    identity = os.environ["WIF_IDENTITY"]

    def client(cred=None, subscription=sub):
        return ManagedServiceIdentityClient(
            cred or credential(),
            subscription,
            base_url=base + "/arm",
            credential_scopes=["https://management.azure.com/.default"],
        )

    msi = client()
    fics = msi.federated_identity_credentials

    def fic(subject):
        return FederatedIdentityCredential(issuer=ISSUER, subject=subject, audiences=[AUDIENCE])

    uami = msi.user_assigned_identities.get(rg, identity)
    check("arm get identity", uami.name == identity and uami.client_id, repr(uami))

    created = fics.create_or_update(rg, identity, "sdk-arm-1", fic("system:serviceaccount:sdk:one"))
    check(
        "arm create credential",
        created.name == "sdk-arm-1" and created.issuer == ISSUER and created.audiences == [AUDIENCE],
        repr(created),
    )
    got = fics.get(rg, identity, "sdk-arm-1")
    check("arm get credential", got.subject == "system:serviceaccount:sdk:one", repr(got))
    updated = fics.create_or_update(rg, identity, "sdk-arm-1", fic("system:serviceaccount:sdk:uno"))
    check("arm update credential (PUT again)", updated.subject == "system:serviceaccount:sdk:uno", repr(updated))

    for i in range(2, 6):
        fics.create_or_update(rg, identity, "sdk-arm-{}".format(i), fic("system:serviceaccount:sdk:{}".format(i)))
    pages = list(fics.list(rg, identity, top=2).by_page())
    names = [c.name for page in pages for c in page]
    check(
        "arm list pages through nextLink",
        len(pages) >= 3 and all(n in names for n in ("sdk-arm-1", "sdk-arm-5")) and len(names) == len(set(names)),
        "pages={} names={}".format(len(pages), names),
    )

    expect_error(
        "arm get missing credential",
        lambda: fics.get(rg, identity, "sdk-arm-missing"),
        ResourceNotFoundError,
        404,
        "NotFound",
    )
    expect_error(
        "arm list credentials of a missing identity",
        lambda: list(fics.list(rg, "no-such-identity")),
        ResourceNotFoundError,
        404,
        "ParentResourceNotFound",
    )
    expect_error(
        "arm missing resource group",
        lambda: msi.user_assigned_identities.get("no-such-group", identity),
        ResourceNotFoundError,
        404,
        "ResourceGroupNotFound",
    )
    expect_error(
        "arm missing subscription",
        lambda: client(subscription="00000000-0000-0000-0000-0000000000aa").user_assigned_identities.get(rg, identity),
        ResourceNotFoundError,
        404,
        "SubscriptionNotFound",
    )
    expect_error(
        "arm duplicate issuer+subject",
        lambda: fics.create_or_update(rg, identity, "sdk-arm-dup", fic("system:serviceaccount:sdk:uno")),
        HttpResponseError,
        400,
        "BadRequest",
    )
    expect_error(
        "arm invalid credential name",
        lambda: fics.create_or_update(rg, identity, "-bad", fic("system:serviceaccount:sdk:bad")),
        HttpResponseError,
        400,
        "BadRequest",
    )
    expect_error(
        "arm token for another audience",
        lambda: client(StaticToken(os.environ["WIF_FOREIGN_TOKEN"])).user_assigned_identities.get(rg, identity),
        ClientAuthenticationError,
        401,
        "InvalidAuthenticationTokenAudience",
    )

    # The limit: the identity already has some; fill up to 20, then the 21st is refused.
    existing = len(list(fics.list(rg, identity)))
    for i in range(existing, 20):
        fics.create_or_update(rg, identity, "sdk-fill-{}".format(i), fic("system:serviceaccount:fill:{}".format(i)))
    check("arm 20 credentials", len(list(fics.list(rg, identity))) == 20)
    expect_error(
        "arm the 21st credential",
        lambda: fics.create_or_update(rg, identity, "sdk-arm-21st", fic("system:serviceaccount:sdk:21")),
        HttpResponseError,
        400,
        "BadRequest",
    )
    for c in list(fics.list(rg, identity)):
        if c.name.startswith("sdk-fill-") or c.name.startswith("sdk-arm-"):
            fics.delete(rg, identity, c.name)

    # Concurrent writes to one identity: ARM serialises them and refuses the overlapping ones.
    results = []

    def write(i):
        try:
            fics.create_or_update(rg, identity, "sdk-conc-{}".format(i), fic("system:serviceaccount:conc:{}".format(i)))
            results.append("ok")
        except ResourceExistsError as error:
            results.append(error_status_and_code(error))
        except Exception as error:
            results.append(repr(error))

    threads = [threading.Thread(target=write, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    conflict = (409, "ConcurrentFederatedIdentityCredentialsWritesForSingleManagedIdentity")
    check(
        "arm concurrent writes -> ResourceExistsError 409 ConcurrentFederatedIdentityCredentialsWritesForSingleManagedIdentity",
        results.count("ok") >= 1 and results.count(conflict) >= 1 and results.count("ok") + results.count(conflict) == 4,
        repr(results),
    )
    for c in list(fics.list(rg, identity)):
        if c.name.startswith("sdk-conc-"):
            fics.delete(rg, identity, c.name)

    fics.delete(rg, identity, "sdk-arm-1") if any(c.name == "sdk-arm-1" for c in fics.list(rg, identity)) else None
    expect_error(
        "arm get deleted credential",
        lambda: fics.get(rg, identity, "sdk-arm-1"),
        ResourceNotFoundError,
        404,
        "NotFound",
    )


# === Graph: msgraph-sdk =========================================================================


async def run_graph():
    import ssl

    import httpx
    from kiota_abstractions.api_error import APIError
    from msgraph import GraphRequestAdapter, GraphServiceClient
    from msgraph.generated.applications.item.federated_identity_credentials.federated_identity_credentials_request_builder import (
        FederatedIdentityCredentialsRequestBuilder,
    )
    from msgraph.generated.models.federated_identity_credential import FederatedIdentityCredential
    from msgraph.generated.models.o_data_errors.o_data_error import ODataError
    from msgraph_core import GraphClientFactory, PageIterator
    from msgraph_core.authentication import AzureIdentityAuthenticationProvider

    base = os.environ["WIF_BASE"]
    host = httpx.URL(base).host
    tls = ssl.create_default_context(cafile=os.environ["SSL_CERT_FILE"])

    def graph(cred):
        # The emulator's Graph, with the scope `az` uses for it: its own URL (the cloud's
        # microsoftGraphResourceId).
        auth = AzureIdentityAuthenticationProvider(cred, scopes=[base + "/graph/.default"], allowed_hosts=[host])
        http = GraphClientFactory.create_with_default_middleware(client=httpx.AsyncClient(verify=tls))
        adapter = GraphRequestAdapter(auth, client=http)
        adapter.base_url = base + "/graph/v1.0"
        return GraphServiceClient(request_adapter=adapter), adapter

    client, adapter = graph(credential())
    app = client.applications.by_application_id(os.environ["WIF_APP_OBJECT_ID"])
    fics = app.federated_identity_credentials

    def fic(name, subject):
        return FederatedIdentityCredential(name=name, issuer=ISSUER, subject=subject, audiences=[AUDIENCE])

    by_app_id = await client.applications_with_app_id(os.environ["WIF_APP_ID"]).get()
    check("graph get application by appId", by_app_id.id == os.environ["WIF_APP_OBJECT_ID"], repr(by_app_id))

    created = await fics.post(fic("sdk-graph-1", "system:serviceaccount:sdk:one"))
    check(
        "graph create credential",
        created.name == "sdk-graph-1" and created.id and created.audiences == [AUDIENCE],
        repr(created),
    )
    got = await fics.by_federated_identity_credential_id(created.id).get()
    check("graph get credential by id", got.name == "sdk-graph-1", repr(got))
    by_name = await fics.by_federated_identity_credential_id("sdk-graph-1").get()
    check("graph get credential by name", by_name.id == created.id, repr(by_name))
    await fics.by_federated_identity_credential_id(created.id).patch(
        FederatedIdentityCredential(subject="system:serviceaccount:sdk:uno")
    )
    got = await fics.by_federated_identity_credential_id(created.id).get()
    check("graph update credential", got.subject == "system:serviceaccount:sdk:uno", repr(got))

    # Concurrent creates on one application all land (Graph has no per-parent write lock).
    await asyncio.gather(
        *(fics.post(fic("sdk-graph-{}".format(i), "system:serviceaccount:sdk:{}".format(i))) for i in range(2, 8))
    )
    config = FederatedIdentityCredentialsRequestBuilder.FederatedIdentityCredentialsRequestBuilderGetRequestConfiguration(
        query_parameters=FederatedIdentityCredentialsRequestBuilder.FederatedIdentityCredentialsRequestBuilderGetQueryParameters(
            top=3
        )
    )
    first = await fics.get(request_configuration=config)
    check(
        "graph list first page has an @odata.nextLink",
        len(first.value) == 3 and first.odata_next_link,
        "{} {}".format(len(first.value), first.odata_next_link),
    )
    names = []
    iterator = PageIterator(first, adapter)  # parses the next pages as the first page's type

    def collect(item):
        names.append(item.name)
        return True

    await iterator.iterate(collect)
    wanted = ["sdk-graph-{}".format(i) for i in range(1, 8)]
    check(
        "graph PageIterator walks every page, concurrent creates all landed",
        all(n in names for n in wanted) and len(names) == len(set(names)),
        repr(names),
    )

    async def expect(what, awaitable, status, code):
        try:
            await awaitable
        except ODataError as error:
            got = (error.response_status_code, error.error.code if error.error else None)
            check("{} -> ODataError {} {}".format(what, status, code), got == (status, code), "got {!r}: {}".format(got, error))
            return
        except APIError as error:
            check(what, False, "APIError {} (not parsed as ODataError): {}".format(error.response_status_code, error))
            return
        check(what, False, "no error raised")

    await expect(
        "graph get missing credential",
        fics.by_federated_identity_credential_id("sdk-graph-missing").get(),
        404,
        "Request_ResourceNotFound",
    )
    await expect(
        "graph credentials of a missing application",
        client.applications.by_application_id("00000000-0000-0000-0000-00000000abcd").federated_identity_credentials.get(),
        404,
        "Request_ResourceNotFound",
    )
    await expect(
        "graph duplicate name",
        fics.post(fic("sdk-graph-1", "system:serviceaccount:sdk:other")),
        409,
        "Request_MultipleObjectsWithSameKeyValue",
    )
    await expect(
        "graph duplicate issuer+subject",
        fics.post(fic("sdk-graph-dup", "system:serviceaccount:sdk:uno")),
        400,
        "InvalidFederatedIdentityCredentialValue",
    )
    foreign, _ = graph(StaticToken(os.environ["WIF_FOREIGN_TOKEN"]))
    await expect(
        "graph token for another audience",
        foreign.applications.by_application_id(os.environ["WIF_APP_OBJECT_ID"]).federated_identity_credentials.get(),
        401,
        "InvalidAuthenticationToken",
    )

    listed = await fics.get()
    for i in range(len(listed.value), 20):
        await fics.post(fic("sdk-fill-{}".format(i), "system:serviceaccount:fill:{}".format(i)))
    listed = await fics.get()
    check("graph 20 credentials", len(listed.value) == 20, str(len(listed.value)))
    await expect(
        "graph the 21st credential",
        fics.post(fic("sdk-graph-21st", "system:serviceaccount:sdk:21")),
        400,
        "Request_BadRequest",
    )
    for c in listed.value:
        if c.name.startswith("sdk-"):
            await fics.by_federated_identity_credential_id(c.id).delete()
    await expect(
        "graph get deleted credential",
        fics.by_federated_identity_credential_id(created.id).get(),
        404,
        "Request_ResourceNotFound",
    )


def main():
    mode = sys.argv[1] if len(sys.argv) > 1 else ""
    try:
        if mode == "arm":
            run_arm()
        elif mode == "graph":
            asyncio.run(run_graph())
        else:
            print("usage: check_sdks.py arm|graph", file=sys.stderr)
            return 2
    except Exception as error:
        import traceback

        traceback.print_exc()
        FAILURES.append("unexpected {}: {}".format(type(error).__name__, error))
    if FAILURES:
        print("FAILED: " + ", ".join(FAILURES), file=sys.stderr)
        return 1
    print("OK: " + mode)
    return 0


if __name__ == "__main__":
    sys.exit(main())
