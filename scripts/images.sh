#!/usr/bin/env bash
# make images: OCI image archives for the test node (`controlplane up --node --images DIR`), built
# without a Docker engine or a registry, into $CACHE/images; prints that directory as its LAST line.
#
#   wif.tar          the production image: the static binary `make static` builds (the one the
#                    Dockerfile builds), under the chart's default reference
#                    (image.repository:appVersion); path, USER, ENTRYPOINT, CMD and labels are read
#                    from the Dockerfile's final stage, then checked back in the archive;
#   pause.tar        the pod sandbox image containerd is configured with (a 129-byte program);
#   test-client.tar  the image SDK checks run in: the same static `wif` (for `wif token`) and the
#                    mount points where tests bind the host's Python read-only.
#
# The distroless base's own files (CA bundle, /etc/passwd with nonroot) come from this machine's
# Debian packages, which is what distroless/static-debian12 ships.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
out="${CACHE:-$root/.cache}/images"
mkdir -p "$out"

cp_bin=$(e2e/controlplane/build.sh | tail -1)
wif=$(scripts/build-static.sh | tail -1)
[[ $wif = /* ]] || wif="$root/$wif"

# --- what the Dockerfile's final stage says --------------------------------------------------
last_from=$(grep -n '^FROM ' Dockerfile | tail -1 | cut -d: -f1)
final=$(tail -n +"$last_from" Dockerfile)
user=$(sed -n 's/^USER //p' <<<"$final")
entrypoint=$(sed -n 's/^ENTRYPOINT //p' <<<"$final")
cmd=$(sed -n 's/^CMD //p' <<<"$final")
copy_dst=$(sed -n 's/^COPY --from=build \/wif \(.*\)$/\1/p' <<<"$final")
[[ -n $user && -n $entrypoint && -n $cmd && -n $copy_dst ]] ||
  { echo "images: cannot read USER/ENTRYPOINT/CMD/COPY of the Dockerfile's final stage" >&2; exit 1; }
# LABEL k="v" \ continuation lines → --label k=v
labels=()
while IFS= read -r l; do labels+=(--label "$l"); done < <(
  python3 - <<'EOF'
import re, shlex
text = open("Dockerfile").read()
final = text[text.rindex("\nFROM "):]
m = re.search(r"^LABEL (.*?)(?<!\\)$", final, re.S | re.M)
body = m.group(1).replace("\\\n", " ") if m else ""
for kv in shlex.split(body):
    print(kv)
EOF
)

repo=$(awk '/^image:/{f=1} f && /^  repository:/{print $2; exit}' charts/wif/values.yaml)
version=$(sed -n 's/^appVersion: *"\{0,1\}\([^"]*\)"\{0,1\}$/\1/p' charts/wif/Chart.yaml)
name="$repo:$version"

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
printf 'root:x:0:0:root:/root:/sbin/nologin\nnobody:x:65534:65534:nobody:/nonexistent:/sbin/nologin\nnonroot:x:65532:65532:nonroot:/home/nonroot:/sbin/nologin\n' >"$tmp/passwd"
printf 'root:x:0:\nnobody:x:65534:\nnonroot:x:65532:\n' >"$tmp/group"
ca=/etc/ssl/certs/ca-certificates.crt
[[ -f $ca ]] || { echo "images: $ca is missing (apt-get install ca-certificates)" >&2; exit 1; }

"$cp_bin" image --out "$out/wif.tar" --name "$name" \
  --file "$wif:$copy_dst:0755" --file "$tmp/passwd:/etc/passwd:0644" --file "$tmp/group:/etc/group:0644" \
  --file "$ca:/etc/ssl/certs/ca-certificates.crt:0644" --dir /tmp:1777 --dir /home/nonroot:0700 \
  --user "$user" --entrypoint "$entrypoint" --cmd "$cmd" \
  --env PATH=/usr/local/bin:/usr/bin:/bin --env SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt "${labels[@]}"
"$cp_bin" image --out "$out/pause.tar" --name localhost/wif-e2e/pause:1 --pause /pause \
  --entrypoint '["/pause"]' --user 65535:65535
"$cp_bin" image --out "$out/test-client.tar" --name localhost/wif-e2e/test-client:1 \
  --file "$wif:/wif:0755" --file "$tmp/passwd:/etc/passwd:0644" --file "$tmp/group:/etc/group:0644" \
  --dir /usr --dir /lib --dir /lib64 --dir /venv --dir /tmp:1777 --dir /token \
  --user 1000:1000 --entrypoint '["/wif"]' --cmd '["--help"]'

# --- the check: the archive holds what the Dockerfile says ---------------------------------------
python3 - "$out/wif.tar" "$name" "$user" "$entrypoint" "$cmd" "$copy_dst" "$wif" <<'EOF'
import hashlib, io, json, sys, tarfile
archive, name, user, entrypoint, cmd, dst, binary = sys.argv[1:]
problems = []
with tarfile.open(archive) as t:
    blob = lambda d: t.extractfile("blobs/sha256/" + d.split(":", 1)[1]).read()
    index = json.loads(t.extractfile("index.json").read())
    desc = index["manifests"][0]
    if desc["annotations"]["io.containerd.image.name"] != name:
        problems.append(f"image name {desc['annotations']['io.containerd.image.name']} != chart default {name}")
    manifest = json.loads(blob(desc["digest"]))
    config = json.loads(blob(manifest["config"]["digest"]))["config"]
    for key, want in (("User", user), ("Entrypoint", json.loads(entrypoint)), ("Cmd", json.loads(cmd))):
        if config.get(key) != want:
            problems.append(f"{key} {config.get(key)!r} != Dockerfile's {want!r}")
    layer = tarfile.open(fileobj=io.BytesIO(blob(manifest["layers"][0]["digest"])))
    member = layer.getmember(dst.lstrip("/"))
    data = layer.extractfile(member).read()
    if hashlib.sha256(data).digest() != hashlib.sha256(open(binary, "rb").read()).digest():
        problems.append(f"{dst} is not the static binary {binary}")
    if member.mode & 0o111 == 0:
        problems.append(f"{dst} is not executable")
if problems:
    sys.exit("images: wif.tar differs from the Dockerfile: " + "; ".join(problems))
print(f"images: wif.tar matches the Dockerfile ({name}, USER {user}, ENTRYPOINT {entrypoint})", file=sys.stderr)
EOF
ls -l "$out"/*.tar >&2
echo "$out"
