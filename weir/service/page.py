"""The status page at ``/``: one self-contained HTML page for people.

It draws, from ``/status`` and ``/history`` (both read every 2 s):

- the **dataflow** as Flink draws a job graph (`weir.service.graph`): a box per task —
  the operators chained from one input — with its records per second, its busiest
  slot's busy share (the box turns from blue to red as it nears 100 %) and its
  backpressure (the share of time its input was held back because a slot was full);
  topics as rounded boxes; exchanges, unions, repartition topics and the input topics
  of joins and broadcast state as edges, each with the records per second crossing it;
- **charts of the last five minutes** (`weir.service.history`): records in and out per
  second, consumer lag, watermark lag and checkpoint duration;
- the slots and what they own, partitions with their lag, recent checkpoints, and
  the plan as text.

Plain SVG drawn by a few lines of JavaScript: no external assets, no build step, so
it works on an isolated network. Elements carry ``data-*`` attributes with the
figures they show, which the browser test reads.
"""

PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Weir worker</title>
<style>
 body{font:14px system-ui,sans-serif;margin:1.5em;color:#222;background:#fafafa}
 h1{font-size:1.4em;margin:0 0 .2em} h2{font-size:1.05em;margin:1.4em 0 .4em}
 table{border-collapse:collapse;background:#fff} td,th{border:1px solid #ddd;padding:3px 8px;
 text-align:left} th{background:#f0f0f0} pre{background:#fff;border:1px solid #ddd;padding:8px}
 .ok{color:#1a7f37} .bad{color:#c62828} .muted{color:#777}
 .panel{background:#fff;border:1px solid #ddd} #graph{display:block;max-width:100%;height:auto}
 #charts{display:grid;grid-template-columns:repeat(auto-fill,minmax(440px,1fr));gap:12px}
 svg text{font:12px system-ui,sans-serif;fill:#333} svg .mono{font:11px ui-monospace,monospace}
 svg .title{font-weight:600} svg .small{font-size:11px;fill:#555}
 .edge path{fill:none;stroke:#7a8694;stroke-width:1.6} .edge.via-topic path{stroke-dasharray:6 4}
 .edge text{fill:#37474f} .edge .rate{font-weight:600} .edge rect{fill:#fff;opacity:.9}
 .chart .axis{stroke:#bbb;stroke-width:1} .chart .grid{stroke:#eee;stroke-width:1}
 .chart polyline{fill:none;stroke-width:1.8}
</style></head>
<body>
<h1>Weir &mdash; <span id="job">…</span></h1>
<div id="summary" class="muted">loading /status …</div>
<h2>Dataflow <span class="muted small">(this worker, last 5 s)</span></h2>
<div class="panel"><svg id="graph" width="600" height="120"></svg></div>
<h2>Last 5 minutes</h2>
<div id="charts">
 <svg class="chart" id="chart-throughput" width="440" height="180"></svg>
 <svg class="chart" id="chart-lag" width="440" height="180"></svg>
 <svg class="chart" id="chart-watermark" width="440" height="180"></svg>
 <svg class="chart" id="chart-checkpoint" width="440" height="180"></svg>
</div>
<h2>Slots</h2><table id="slots"></table>
<h2>Partitions</h2><table id="partitions"></table>
<h2>Recent checkpoints</h2><table id="checkpoints"></table>
<details><summary>Plan</summary><pre id="plan"></pre></details>
<script>
const SVG = 'http://www.w3.org/2000/svg';
const WINDOW_MS = 300000;
const ENT = {'&': '&amp;', '<': '&lt;', '>': '&gt;', '"': '&quot;'};
function esc(s){ return String(s).replace(/[&<>"]/g, c => ENT[c]); }
function table(id, head, rows){
  document.getElementById(id).innerHTML = '<tr>' + head.map(h=>'<th>'+esc(h)+'</th>').join('') +
    '</tr>' + rows.map(r=>'<tr>'+r.map(c=>'<td>'+esc(c)+'</td>').join('')+'</tr>').join('');
}
function el(parent, name, attrs, text){
  const e = document.createElementNS(SVG, name);
  for (const k in attrs) e.setAttribute(k, attrs[k]);
  if (text !== undefined) e.textContent = text;
  parent.appendChild(e);
  return e;
}
function num(x){
  if (x === null || x === undefined) return '\\u2013';
  if (x >= 10000) return (x / 1000).toFixed(x >= 100000 ? 0 : 1) + 'k';
  return x >= 10 ? Math.round(x).toLocaleString('en') : x.toFixed(1);
}
function pct(x){ return Math.round(100 * (x || 0)) + '%'; }
function clip(s, n){ return s.length > n ? s.slice(0, n - 1) + '…' : s; }

// -- the dataflow graph --------------------------------------------------------------
const TASK_W = 280, TOPIC_W = 170, COL_GAP = 150, ROW_GAP = 28, LINE = 15, CHAR_W = 6.7;
function nodeWidth(n){ return n.kind === 'task' ? TASK_W : TOPIC_W; }
function nodeHeight(n){ return n.kind === 'task' ? 66 + LINE * n.operators.length : 34; }
function busyColor(b){  // Flink's scale: idle blue to busy red
  const f = Math.min(1, b || 0);
  return 'hsl(' + (210 - 210 * f) + ',70%,' + (93 - 10 * f) + '%)';
}
function layout(graph){
  const cols = [];
  for (const n of graph.nodes) (cols[n.column] = cols[n.column] || []).push(n);
  const height = c => c.reduce((h, n) => h + nodeHeight(n) + ROW_GAP, -ROW_GAP);
  const total = Math.max(...cols.map(c => c ? height(c) : 0), 40);
  const at = {};
  let x = 16;
  for (const c of cols) {
    if (!c) continue;
    const width = Math.max(...c.map(nodeWidth));
    let y = 16 + (total - height(c)) / 2;
    for (const n of c.sort((a, b) => a.row - b.row)) {
      const w = nodeWidth(n);
      at[n.id] = {x: x + (width - w) / 2, y: y, w: w, h: nodeHeight(n)};
      y += nodeHeight(n) + ROW_GAP;
    }
    x += width + COL_GAP;
  }
  return {at: at, width: x - COL_GAP + 16, height: total + 32};
}
function drawEdge(svg, e, a, b){
  const x1 = a.x + a.w, y1 = a.y + a.h / 2, x2 = b.x - 2, y2 = b.y + b.h / 2;
  const mx = (x1 + x2) / 2;
  const viaTopic = ['source', 'sink', 'late', 'repartition', 'side'].includes(e.kind);
  const g = el(svg, 'g', {'class': 'edge' + (viaTopic ? ' via-topic' : ''), 'data-kind': e.kind,
    'data-source': e.source, 'data-target': e.target,
    'data-records-per-s': e.records_per_s ?? ''});
  el(g, 'path', {d: 'M' + x1 + ',' + y1 + ' C' + mx + ',' + y1 + ' ' + mx + ',' + y2 + ' ' +
    x2 + ',' + y2, 'marker-end': 'url(#arrow)'});
  const lines = [num(e.records_per_s) + ' rec/s'];
  const room = Math.floor((COL_GAP - 12) / CHAR_W);
  if (e.kind === 'repartition') lines.unshift('repartition topic', clip(e.label, room));
  else if (e.kind === 'side') lines.unshift('input topic', clip(e.label, room));
  else if (e.kind === 'union') lines.unshift('union');
  else if (e.kind === 'late') lines.unshift('late records');
  else if (!viaTopic) lines.unshift(e.kind + ' exchange');
  const ly = (y1 + y2) / 2 - 8 * lines.length + 4;
  const wide = Math.max(...lines.map(l => l.length)) * CHAR_W + 8;
  el(g, 'rect', {x: mx - wide / 2, y: ly - 12, width: wide, height: 16 * lines.length, rx: 3});
  lines.forEach((l, i) => el(g, 'text', {x: mx, y: ly + 16 * i, 'text-anchor': 'middle',
    'class': i === lines.length - 1 ? 'rate' : 'small mono'}, l));
  el(g, 'title', {}, e.kind + ' ' + e.label);
}
function drawTask(svg, n, p){
  const g = el(svg, 'g', {'class': 'task', 'data-id': n.id,
    'data-records-per-s': n.records_per_s ?? '', 'data-busy': n.busy ?? '',
    'data-backpressure': n.backpressure ?? ''});
  el(g, 'rect', {x: p.x, y: p.y, width: p.w, height: p.h, rx: 5, fill: busyColor(n.busy),
    stroke: '#607d8b'});
  const fits = Math.floor((p.w - 24) / CHAR_W);
  el(g, 'text', {x: p.x + 10, y: p.y + 18, 'class': 'title'}, clip(n.label, fits - 4));
  n.operators.forEach((o, i) => {
    const t = el(g, 'text', {x: p.x + 14, y: p.y + 37 + i * LINE, 'class': 'mono'},
                 clip(o.kind + ' ' + o.name, fits));
    el(t, 'title', {}, o.describe);
  });
  const base = p.y + p.h - 12;
  el(g, 'text', {x: p.x + 10, y: base - 7, 'class': 'small'},
     num(n.records_per_s) + ' rec/s · busy ' + pct(n.busy) + ' · backpressure ' +
     pct(n.backpressure));
  el(g, 'rect', {x: p.x + 10, y: base, width: p.w - 20, height: 7, fill: '#fff',
    stroke: '#cfd8dc'});
  el(g, 'rect', {x: p.x + 10, y: base, width: (p.w - 20) * Math.min(1, n.busy || 0),
    height: 3.5, fill: '#e53935', 'class': 'busy-bar'});
  el(g, 'rect', {x: p.x + 10, y: base + 3.5, width: (p.w - 20) *
    Math.min(1, n.backpressure || 0), height: 3.5, fill: '#6a1b9a', 'class': 'backpressure-bar'});
}
function drawGraph(graph){
  const svg = document.getElementById('graph');
  svg.replaceChildren();
  el(svg, 'defs', {}).innerHTML = '<marker id="arrow" viewBox="0 0 10 10" refX="9" refY="5" ' +
    'markerWidth="7" markerHeight="7" orient="auto-start-reverse">' +
    '<path d="M0,0 L10,5 L0,10 z" fill="#7a8694"/></marker>';
  const {at, width, height} = layout(graph);
  svg.setAttribute('viewBox', '0 0 ' + width + ' ' + height);  // shrinks to fit the page
  svg.setAttribute('width', width); svg.setAttribute('height', height);
  for (const e of graph.edges) drawEdge(svg, e, at[e.source], at[e.target]);
  for (const n of graph.nodes) {
    const p = at[n.id];
    if (n.kind === 'task') { drawTask(svg, n, p); continue; }
    const g = el(svg, 'g', {'class': 'topic', 'data-id': n.id});
    el(g, 'rect', {x: p.x, y: p.y, width: p.w, height: p.h, rx: 17, fill: '#eceff1',
      stroke: '#90a4ae'});
    el(g, 'text', {x: p.x + p.w / 2, y: p.y + 21, 'text-anchor': 'middle', 'class': 'mono'},
       clip(n.label, Math.floor((p.w - 16) / CHAR_W)));
    el(g, 'title', {}, 'topic ' + n.label);
  }
}

// -- charts of the last five minutes ---------------------------------------------------
const CHARTS = [
  {id: 'chart-throughput', title: 'Throughput (records/s)', series: [
    {key: 'records_in_per_s', name: 'in', color: '#1e88e5'},
    {key: 'records_out_per_s', name: 'out', color: '#43a047', dash: '5 3'}]},
  {id: 'chart-lag', title: 'Consumer lag (records)', series: [
    {key: 'consumer_lag', name: 'lag', color: '#fb8c00'}]},
  {id: 'chart-watermark', title: 'Watermark lag (s)', series: [
    {key: 'watermark_lag_s', name: 'lag', color: '#8e24aa'}]},
  {id: 'chart-checkpoint', title: 'Checkpoint duration (ms)', dots: true, series: [
    {key: 'checkpoint_s', name: 'duration', color: '#00897b', scale: 1000}]},
];
function niceMax(v){
  if (!(v > 0)) return 1;
  const p = Math.pow(10, Math.floor(Math.log10(v)));
  for (const m of [1, 2, 5, 10]) if (m * p >= v) return m * p;
  return 10 * p;
}
function drawChart(spec, samples){
  const svg = document.getElementById(spec.id);
  svg.replaceChildren();
  const W = 440, H = 180, L = 52, R = 12, T = 26, B = 24;
  const now = samples.length ? samples[samples.length - 1].t : Date.now();
  // The last five minutes, or since the worker started (at least one minute).
  const span = Math.min(WINDOW_MS, Math.max(60000, samples.length ? now - samples[0].t : 0));
  const x = t => L + (W - L - R) * (1 - (now - t) / span);
  let max = 0, points = 0;
  const values = spec.series.map(s => samples.filter(p => p[s.key] !== null &&
    p[s.key] !== undefined).map(p => [p.t, p[s.key] * (s.scale || 1)]));
  for (const v of values) for (const [, y] of v) max = Math.max(max, y);
  const top = niceMax(max);
  const y = v => T + (H - T - B) * (1 - v / top);
  el(svg, 'text', {x: L, y: 16, 'class': 'title'}, spec.title);
  for (const f of [0, 0.5, 1]) {
    el(svg, 'line', {x1: L, x2: W - R, y1: y(top * f), y2: y(top * f),
      'class': f ? 'grid' : 'axis'});
    el(svg, 'text', {x: L - 6, y: y(top * f) + 4, 'text-anchor': 'end', 'class': 'small'},
       num(top * f));
  }
  const step = [10000, 15000, 30000, 60000].find(s => span / s <= 6) || 60000;
  for (let ago = 0; ago <= span; ago += step) {
    const label = !ago ? 'now' : ago % 60000 ? -ago / 1000 + 's' : -ago / 60000 + 'm';
    el(svg, 'text', {x: x(now - ago), y: H - 6, 'text-anchor': 'middle', 'class': 'small'},
       label);
  }
  spec.series.forEach((s, i) => {
    const pts = values[i].filter(([t]) => now - t <= span);
    points += pts.length;
    const coords = pts.map(([t, v]) => x(t).toFixed(1) + ',' + y(v).toFixed(1)).join(' ');
    el(svg, 'polyline', {points: coords, stroke: s.color, 'stroke-dasharray': s.dash || 'none',
      'data-series': s.key, 'data-points': pts.length});
    if (spec.dots) for (const [t, v] of pts) el(svg, 'circle', {cx: x(t), cy: y(v), r: 2.2,
      fill: s.color});
    const last = pts.length ? pts[pts.length - 1][1] : null;
    el(svg, 'text', {x: W - R - 150 + 75 * i, y: 16, fill: s.color, 'class': 'small'},
       s.name + ' ' + num(last));
  });
  svg.setAttribute('data-points', points);
}

// -- polling -----------------------------------------------------------------------------
let samples = [];
async function refreshHistory(){
  const since = samples.length ? samples[samples.length - 1].t : 0;
  const h = await (await fetch('/history?since=' + since)).json();
  samples = samples.concat(h.samples);
  const now = samples.length ? samples[samples.length - 1].t : 0;
  samples = samples.filter(p => now - p.t <= WINDOW_MS);
  for (const spec of CHARTS) drawChart(spec, samples);
}
async function refreshStatus(){
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
  drawGraph(s.graph);
  table('slots', ['slot', 'owns', 'records', 'batches', 'failed', 'queued'],
        s.slots.map(x => [x.slot, x.owns.join(', '), x.records, x.batches, x.failed, x.queued]));
  table('partitions', ['partition', 'lag', 'paused', 'restoring'],
        s.partitions.map(p => [p, s.lag[p] ?? '', s.paused.includes(p) ? 'yes' : '',
                               s.restoring.includes(p) ? 'yes' : '']));
  table('checkpoints', ['id', 'status', 'duration ms', 'alignment ms', 'offsets', 'reason'],
        s.checkpoints.slice().reverse().map(c => [c.id, c.status,
          (c.duration_s*1000).toFixed(1), (c.alignment_s*1000).toFixed(1), c.offsets, c.reason]));
}
async function refresh(){
  try {
    await Promise.all([refreshStatus(), refreshHistory()]);
  } catch (e) {
    document.getElementById('summary').textContent = 'cannot read the worker: ' + e;
  }
}
refresh(); setInterval(refresh, 2000);
</script>
</body></html>
"""
