#!/bin/sh
# The systemd units in this folder, from Procfile.prod, by honcho's own exporter:
#   deploy/systemd/export.sh            # rewrites them here (commit the result)
#   deploy/systemd/export.sh DIR        # writes them to DIR (tests/unit/test_deploy_systemd.py)
# The app is installed in /srv/stack and runs as the user `stack`; secrets come from
# /etc/stack/stack.env (templates/process.service). Logs go to the journal, so honcho's --log is moot.
set -eu
here=$(cd "$(dirname "$0")" && pwd)
out=${1:-$here}
# --env /dev/null and no PORT/PROCFILE from the caller: the units depend on Procfile.prod alone,
# never on a developer's .env (whose values would end up in the units, secrets included).
exec env -u PORT -u PROCFILE honcho export systemd "$out" \
    --procfile "$here/../../Procfile.prod" --env /dev/null \
    --app stack --user stack --app-root /srv/stack --port 8000 \
    --template-dir "$here/templates"
