"""The status page at ``/``: one self-contained HTML page for people.

It renders ``/status`` (refreshed every 2 s): the job's operator graph, the
slots and what they own, partitions with their lag, the watermark and the
recent checkpoints. No external assets, so it works on an isolated network.
"""

PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Weir worker</title>
<style>
 body{font:14px system-ui,sans-serif;margin:1.5em;color:#222;background:#fafafa}
 h1{font-size:1.4em;margin:0 0 .2em} h2{font-size:1.05em;margin:1.4em 0 .4em}
 table{border-collapse:collapse;background:#fff} td,th{border:1px solid #ddd;padding:3px 8px;
 text-align:left} th{background:#f0f0f0} pre{background:#fff;border:1px solid #ddd;padding:8px}
 .ok{color:#1a7f37} .bad{color:#c62828} .muted{color:#777}
</style></head>
<body>
<h1>Weir &mdash; <span id="job">…</span></h1>
<div id="summary" class="muted">loading /status …</div>
<h2>Operator graph</h2><pre id="plan"></pre>
<h2>Slots</h2><table id="slots"></table>
<h2>Partitions</h2><table id="partitions"></table>
<h2>Recent checkpoints</h2><table id="checkpoints"></table>
<script>
const ENT = {'&': '&amp;', '<': '&lt;', '>': '&gt;', '"': '&quot;'};
function esc(s){ return String(s).replace(/[&<>"]/g, c => ENT[c]); }
function table(id, head, rows){
  document.getElementById(id).innerHTML = '<tr>' + head.map(h=>'<th>'+esc(h)+'</th>').join('') +
    '</tr>' + rows.map(r=>'<tr>'+r.map(c=>'<td>'+esc(c)+'</td>').join('')+'</tr>').join('');
}
async function refresh(){
  try {
    const s = await (await fetch('/status')).json();
    document.getElementById('job').textContent = s.job;
    const wm = s.watermark ? new Date(s.watermark).toISOString() : 'none';
    document.getElementById('summary').innerHTML =
      'worker <b>' + esc(s.worker_id) + '</b> in group <b>' + esc(s.group) + '</b> · ' +
      '<span class="' + (s.state === 'running' ? 'ok' : 'bad') + '">' + esc(s.state) +
      '</span> · ' +
      esc(s.guarantee) + ' · routing ' + esc(s.routing) + ' · watermark ' + esc(wm) +
      ' · restarts ' + esc(s.restarts);
    document.getElementById('plan').textContent = s.plan;
    table('slots', ['slot', 'owns', 'records', 'batches', 'failed', 'queued'],
          s.slots.map(x => [x.slot, x.owns.join(', '), x.records, x.batches, x.failed, x.queued]));
    table('partitions', ['partition', 'lag', 'paused', 'restoring'],
          s.partitions.map(p => [p, s.lag[p] ?? '', s.paused.includes(p) ? 'yes' : '',
                                 s.restoring.includes(p) ? 'yes' : '']));
    table('checkpoints', ['id', 'status', 'duration ms', 'alignment ms', 'offsets', 'reason'],
          s.checkpoints.slice().reverse().map(c => [c.id, c.status,
            (c.duration_s*1000).toFixed(1), (c.alignment_s*1000).toFixed(1), c.offsets, c.reason]));
  } catch (e) {
    document.getElementById('summary').textContent = 'cannot read /status: ' + e;
  }
}
refresh(); setInterval(refresh, 2000);
</script>
</body></html>
"""
