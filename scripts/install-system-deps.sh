#!/usr/bin/env bash
# Install what clusterlmer needs from the OS on Debian/Ubuntu: R, lme4,
# lmerTest, pbkrtest (R packages from Debian, not CRAN), emmeans (post-hoc tests
# of the pymer4 extra: fit.model_at(t).post_hoc), the R headers rpy2 builds
# against, and Python's venv module. Does nothing when all are there.
set -euo pipefail

have_r_packages() {
  command -v Rscript >/dev/null 2>&1 &&
    [ -f "$(Rscript -e 'cat(R.home("include"))' 2>/dev/null)/R.h" ] &&
    Rscript -e 'for (p in c("lme4", "lmerTest", "pbkrtest", "numDeriv", "emmeans")) if (!requireNamespace(p, quietly = TRUE)) quit(status = 1)' >/dev/null 2>&1
}
have_venv() { python3 -c 'import venv, ensurepip' >/dev/null 2>&1; }

if have_r_packages && have_venv; then
  echo "System dependencies present: $(Rscript -e 'cat(R.version.string)')"
  exit 0
fi

if ! command -v apt-get >/dev/null 2>&1; then
  echo "error: R with lme4, lmerTest, pbkrtest and emmeans is missing and this is not a Debian/Ubuntu system." >&2
  echo "       Install R and those packages yourself (or use environment.yml with conda)." >&2
  exit 1
fi
SUDO=""
if [ "$(id -u)" -ne 0 ]; then
  command -v sudo >/dev/null 2>&1 || { echo "error: need root or sudo to install R packages with apt-get." >&2; exit 1; }
  SUDO="sudo"
fi
packages=(r-base-core r-base-dev r-cran-lme4 r-cran-lmertest r-cran-pbkrtest r-cran-numderiv r-cran-emmeans python3-venv python3-dev)
echo "Installing: ${packages[*]}"
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq --no-install-recommends "${packages[@]}" >/dev/null
have_r_packages || { echo "error: R packages still missing after apt-get install." >&2; exit 1; }
echo "Installed: $(Rscript -e 'cat(R.version.string)')"
