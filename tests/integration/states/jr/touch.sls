# Slow state run for tests: sleep pillar `sleep` (default 3) seconds, then append
# "<mark> <minion id>" to <lab root>/trace/<id>.log (the file publish_trace writes).
#   salt --async alpha state.apply jr.touch pillar='{"mark": "s1", "sleep": 3}'
# jr_trace_dir is set in every lab minion's config.
{%- set mark = pillar.get('mark', 'touch') %}
{%- set sleep = pillar.get('sleep', 3) %}
{%- set trace = salt['config.get']('jr_trace_dir') %}
jr-touch:
  cmd.run:
    - name: sleep {{ sleep }}; echo "{{ mark }} {{ grains['id'] }}" >> {{ trace }}/{{ grains['id'] }}.log
