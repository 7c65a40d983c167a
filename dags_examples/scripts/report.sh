#!/bin/sh
# Read by example_tes_script_file.py and templated: the values below are filled in by Airflow.
set -eu
sample="{{ params.sample }}"
{
  echo "sample: $sample"
  echo "run: {{ run_id }}"
  i=1
  while [ "$i" -le {{ params.lines }} ]; do
    echo "line $i"
    i=$((i + 1))
  done
} > report.txt
echo "report for $sample written"
