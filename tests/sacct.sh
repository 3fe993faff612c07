#!/bin/sh
# `sacct -o JobID,State,NodeList --parsable2 -j ID ...`, as submitit asks it, for a test cluster without an
# accounting database: answered from slurmctld's memory of its jobs (`scontrol show job`; kept MinJobAge seconds).
echo "JobID|State|NodeList"
ids=""
while [ $# -gt 0 ]; do
    [ "$1" = "-j" ] && { shift; ids="$ids $1"; }
    shift
done
for id in $ids; do
    scontrol -o show job "$id" 2>/dev/null | awk '{
        delete v
        for (i = 1; i <= NF; i++) { k = $i; sub(/=.*/, "", k); v[k] = substr($i, length(k) + 2) }
        task = v["ArrayTaskId"]
        if (task ~ /[-,]/) task = "[" task "]"
        print (task != "" ? v["ArrayJobId"] "_" task : v["JobId"]) "|" v["JobState"] "|" v["NodeList"]
    }'
done
