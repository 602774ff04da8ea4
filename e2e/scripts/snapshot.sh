#!/usr/bin/env bash
# Prints what Cilia's tests and lab could leave behind: namespaces, pinned objects, processes, links
# in the host namespace. `make test` compares this before and after the suite.
set -u
echo "# network namespaces"
ip netns list 2>/dev/null | awk '{print $1}' | grep '^cilia' | sort
echo "# pinned objects"
find /sys/fs/bpf/cilia -mindepth 1 2>/dev/null | sort
echo "# processes"
pgrep -a -f '(^|/)cilia-(agent|operator|apiserver|cni)( |$)' | awk '{print $2}' | sort | uniq -c
echo "# host links"
ip -o link show 2>/dev/null | awk -F': ' '{print $2}' | grep -E '^(lxc|cilia|p-)' | sort
exit 0
