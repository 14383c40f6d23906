"""Summarises an Autobahn|Testsuite report and fails on any bad outcome.

Sections 1-11 must end OK, NON-STRICT or INFORMATIONAL (for the case and for
its closing handshake); 12-13 (permessage-deflate, which papo does not offer)
may also be UNIMPLEMENTED.
"""
import collections
import json
import sys

GOOD = {"OK", "NON-STRICT", "INFORMATIONAL"}
COMPRESSION = {"12", "13"}


def main(path):
    with open(path) as f:
        report = json.load(f)
    counts = collections.Counter()
    bad = []
    for agent, cases in report.items():
        for case, result in cases.items():
            allowed = GOOD | ({"UNIMPLEMENTED"} if case.split(".")[0] in COMPRESSION else set())
            behavior = result["behavior"]
            close = result.get("behaviorClose", "OK")
            counts[behavior] += 1
            if behavior not in allowed or (close not in allowed and behavior != "UNIMPLEMENTED"):
                bad.append("%s %s: %s (close: %s)" % (agent, case, behavior, close))
    total = sum(counts.values())
    summary = ", ".join("%d %s" % (n, k) for k, n in sorted(counts.items()))
    print("autobahn: %d cases: %s" % (total, summary))
    for line in sorted(bad):
        print("autobahn: FAILED " + line)
    if total == 0:
        print("autobahn: no cases ran")
        return 1
    # The plain closing line test harnesses read.
    print("autobahn: %d passed, %d failed" % (total - len(bad), len(bad)))
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
