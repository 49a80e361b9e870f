#!/usr/bin/env bash
# Turn built .debs into a signed APT repository (reprepro), ready to serve over HTTP(S):
#
#   scripts/build-apt-repo.sh --out DIR --gnupghome KEYDIR [--new-key] DEB...
#
# Each .deb goes into the release it was built for: +deb12 -> bookworm, +deb13 -> trixie
# (scripts/build-deb.sh names them so). A newer version of a package replaces the older
# one in its release; DIR can be rebuilt from the .debs at any time.
#
# The repository is signed (InRelease, Release.gpg) with the first secret key in
# KEYDIR (a GnuPG home; keep it off the web server). --new-key makes one there when it
# has none: ed25519, no passphrase, for a CI or test signer; a production key is made
# once by hand and kept offline. The key's public half is written to
# DIR/hivemind-archive-keyring.gpg; operators install it as
# /etc/apt/keyrings/hivemind.gpg and name it with signed-by= (README "Install from
# the APT repository").
# Needs: apt-get install --no-install-recommends reprepro gnupg
set -euo pipefail

out=""
gnupghome=""
new_key=0
debs=()
while [ $# -gt 0 ]; do
    case "$1" in
        --out) out=${2:?--out needs a directory}; shift 2 ;;
        --gnupghome) gnupghome=${2:?--gnupghome needs a directory}; shift 2 ;;
        --new-key) new_key=1; shift ;;
        -h|--help) sed -n '2,17p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'; exit 0 ;;
        -*) echo "build-apt-repo.sh: unknown option $1 (see --help)" >&2; exit 2 ;;
        *) debs+=("$1"); shift ;;
    esac
done
die() { echo "build-apt-repo.sh: $*" >&2; exit 1; }
{ [ -n "$out" ] && [ -n "$gnupghome" ]; } || die "usage: build-apt-repo.sh --out DIR --gnupghome KEYDIR [--new-key] DEB..."
[ ${#debs[@]} -gt 0 ] || die "no .deb given (build them with scripts/build-deb.sh)"
for tool in reprepro gpg; do
    command -v "$tool" >/dev/null || die "$tool is missing: apt-get install --no-install-recommends reprepro gnupg"
done

export GNUPGHOME=$gnupghome
mkdir -p "$GNUPGHOME"
chmod 700 "$GNUPGHOME"
fingerprint() { gpg --batch --with-colons --list-secret-keys 2>/dev/null | awk -F: '$1 == "fpr" {print $10; exit}'; }
if [ -z "$(fingerprint)" ]; then
    [ "$new_key" = 1 ] || die "no secret key in $GNUPGHOME: import the signing key there, or pass --new-key to make one"
    gpg --batch --quiet --passphrase '' --quick-gen-key "HiveMind worker packages <packages@hivemind.invalid>" ed25519 sign 2y
    echo "made a signing key in $GNUPGHOME"
fi
fpr=$(fingerprint)

mkdir -p "$out/conf"
cat > "$out/conf/distributions" <<EOF
Origin: HiveMind
Label: HiveMind worker
Codename: bookworm
Suite: oldstable
Architectures: amd64 arm64
Components: main
Description: HiveMind worker for Debian 12
SignWith: $fpr

Origin: HiveMind
Label: HiveMind worker
Codename: trixie
Suite: stable
Architectures: amd64 arm64
Components: main
Description: HiveMind worker for Debian 13
SignWith: $fpr
EOF

for deb in "${debs[@]}"; do
    [ -f "$deb" ] || die "$deb: no such file"
    version=$(dpkg-deb -f "$deb" Version)
    case "$version" in
        *+deb12) codename=bookworm ;;
        *+deb13) codename=trixie ;;
        *) die "$deb: version $version names no release (+deb12 or +deb13); build it with scripts/build-deb.sh" ;;
    esac
    reprepro -b "$out" --silent includedeb "$codename" "$deb" \
        || die "reprepro could not add $deb to $codename (a different file of the same version is there already?)"
    echo "added $(basename "$deb") to $codename"
done
reprepro -b "$out" --silent export
gpg --batch --yes --export "$fpr" > "$out/hivemind-archive-keyring.gpg"
echo "repository $out signed by $fpr; public key: $out/hivemind-archive-keyring.gpg"
