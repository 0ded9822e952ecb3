#!/bin/sh
# Registers the custom search attributes the download workflow keeps current
# (`temporal workflow list --query "DownloadStatus='failed'"`). Safe to run again.
set -eu

address="${TEMPORAL_ADDRESS:-temporal:7233}"
namespace="${TEMPORAL_NAMESPACE:-default}"
attributes="${SEARCH_ATTRIBUTES:-DownloadStatus=Keyword Owner=Keyword FileCount=Int DownloadPriority=Int}"

# The namespace exists only once auto-setup has finished.
tries=0
until temporal operator namespace describe --address "$address" --namespace "$namespace" \
    >/dev/null 2>&1; do
    tries=$((tries + 1))
    if [ "$tries" -ge 90 ]; then
        echo "namespace $namespace not available at $address" >&2
        exit 1
    fi
    sleep 2
done

for attribute in $attributes; do
    name="${attribute%%=*}"
    type="${attribute#*=}"
    if output=$(temporal operator search-attribute create --address "$address" \
        --namespace "$namespace" --name "$name" --type "$type" 2>&1); then
        echo "search attribute $name ($type) registered in $namespace"
    elif printf '%s' "$output" | grep -qi "already exists" \
        && ! printf '%s' "$output" | grep -qi "different type"; then
        echo "search attribute $name already exists in $namespace"
    else
        printf '%s\n' "$output" >&2
        exit 1
    fi
done
