# What the highstate applies (see top.sls): sleep pillar `sleep` (default 2) seconds, then
# append "<mark> <minion id>" (mark defaults to "hs") to <lab root>/trace/<id>.log.
{%- set mark = pillar.get('mark', 'hs') %}
{%- set sleep = pillar.get('sleep', 2) %}
{%- set trace = salt['config.get']('jr_trace_dir') %}
jr-hs:
  cmd.run:
    - name: sleep {{ sleep }}; echo "{{ mark }} {{ grains['id'] }}" >> {{ trace }}/{{ grains['id'] }}.log
