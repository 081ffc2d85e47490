// The task-queue dashboard: reads and drives the REST API of the page's own origin with fetch.
// Plain DOM code, no framework. Text from the API is only ever set with textContent (task data is
// untrusted); nothing here is inline, so the page runs under a strict Content-Security-Policy.
'use strict';

(() => {
  const REFRESH_MS = 2500;
  const TOKEN_KEY = 'task-queue.token';
  const STATUSES = ['queued', 'running', 'completed', 'failed', 'cancelled'];
  const SVG_NS = 'http://www.w3.org/2000/svg';
  const $ = (id) => document.getElementById(id);

  const state = {
    cursor: null, // cursor of the page shown (null: the first page)
    before: [], // cursors of the newer pages, to go back with "Newer"
    nextCursor: null,
    selected: null, // id of the task in the detail panel
    paused: null,
    timer: null,
    refreshing: 0, // refreshes under way
    authNeeded: false,
    statsSeq: 0, // answers to older requests than the latest are dropped
    listSeq: 0,
    detailSeq: 0,
    flashTimer: null,
  };

  // ---- helpers -------------------------------------------------------------------------------

  class ApiError extends Error {
    constructor(status, message) {
      super(message);
      this.status = status;
    }
  }

  function el(tag, attrs = {}, children = []) {
    const node = document.createElement(tag);
    for (const [name, value] of Object.entries(attrs)) {
      if (value !== null && value !== undefined) node.setAttribute(name, String(value));
    }
    node.append(...children); // strings become text nodes
    return node;
  }

  function svgEl(tag, attrs = {}) {
    const node = document.createElementNS(SVG_NS, tag);
    for (const [name, value] of Object.entries(attrs)) node.setAttribute(name, String(value));
    return node;
  }

  function show(node, text) {
    node.textContent = text || '';
    node.hidden = !text;
  }

  function flash(text, isError = false) {
    const node = $('message');
    show(node, text);
    node.classList.toggle('message-error', isError);
    clearTimeout(state.flashTimer);
    state.flashTimer = setTimeout(() => show(node, ''), isError ? 10000 : 6000);
  }

  const fmtInt = (n) => (typeof n === 'number' ? n.toLocaleString('en-US') : '–');
  const shortId = (id) => String(id).slice(0, 8);
  const plural = (n, word) => `${n} ${word}${n === 1 ? '' : 's'}`;
  const knownStatus = (s) => (STATUSES.includes(s) ? s : 'unknown');
  const pretty = (value) => JSON.stringify(value, null, 2);

  function fmtAge(seconds) {
    if (typeof seconds !== 'number') return 'none';
    if (seconds < 60) return `${seconds.toFixed(1)} s`;
    if (seconds < 3600) return `${Math.floor(seconds / 60)} min ${Math.floor(seconds % 60)} s`;
    return `${Math.floor(seconds / 3600)} h ${Math.floor((seconds % 3600) / 60)} min`;
  }

  function fmtTime(iso) {
    if (!iso) return '—';
    const d = new Date(iso);
    if (Number.isNaN(d.getTime())) return String(iso);
    const p = (n) => String(n).padStart(2, '0');
    return `${d.getFullYear()}-${p(d.getMonth() + 1)}-${p(d.getDate())} ${p(d.getHours())}:${p(d.getMinutes())}:${p(d.getSeconds())}`;
  }

  function statusBadge(status, node = el('span')) {
    node.className = `status status-${knownStatus(status)}`;
    node.textContent = status;
    return node;
  }

  // ---- the API, with the bearer token ----------------------------------------------------------

  function savedToken() {
    try {
      return sessionStorage.getItem(TOKEN_KEY);
    } catch {
      return null;
    }
  }

  async function api(method, path, body) {
    const headers = { Accept: 'application/json' };
    const token = savedToken();
    if (token) headers.Authorization = `Bearer ${token}`;
    const init = { method, headers, cache: 'no-store' };
    if (body !== undefined) {
      headers['Content-Type'] = 'application/json';
      init.body = JSON.stringify(body);
    }
    let resp;
    try {
      resp = await fetch(path, init);
    } catch {
      throw new ApiError(0, 'cannot reach the service');
    }
    let payload = null;
    try {
      payload = await resp.json();
    } catch {
      // not JSON: the status line says enough
    }
    if (resp.ok) return payload;
    const message = payload && typeof payload.error === 'string' ? payload.error : `HTTP ${resp.status}`;
    if (resp.status === 401) askToken(token ? `That token was refused (${message}).` : '');
    throw new ApiError(resp.status, message);
  }

  function askToken(reason) {
    state.authNeeded = true;
    stopTimer();
    const dialog = $('auth-dialog');
    show($('auth-error'), reason);
    if (!dialog.open) {
      $('auth-token').value = '';
      dialog.showModal();
      $('auth-token').focus();
    }
  }

  function showSignOut() {
    $('sign-out').hidden = !savedToken();
  }

  $('sign-out').addEventListener('click', () => {
    try {
      sessionStorage.removeItem(TOKEN_KEY);
    } catch {
      // nothing was kept
    }
    showSignOut();
    askToken('Signed out: enter a token to go on.');
  });

  $('auth-dialog').addEventListener('cancel', (ev) => ev.preventDefault()); // Escape: keep asking
  $('auth-form').addEventListener('submit', (ev) => {
    ev.preventDefault();
    const token = $('auth-token').value.trim();
    if (!/^[\x21-\x7e]+$/.test(token)) {
      show($('auth-error'), 'Enter the token: printable ASCII characters, no spaces.');
      return;
    }
    try {
      sessionStorage.setItem(TOKEN_KEY, token);
    } catch {
      show($('auth-error'), 'This browser does not allow session storage.');
      return;
    }
    state.authNeeded = false;
    $('auth-dialog').close();
    showSignOut();
    refresh();
  });

  // ---- stats -----------------------------------------------------------------------------------

  function setPaused(paused) {
    state.paused = paused;
    const button = $('pause-toggle');
    button.textContent = paused ? 'Resume' : 'Pause';
    button.dataset.paused = String(paused);
    button.disabled = false;
    $('paused-badge').hidden = !paused;
  }

  async function loadStats() {
    const seq = ++state.statsSeq;
    try {
      const stats = await api('GET', '/stats');
      if (seq !== state.statsSeq) return false;
      const counts = stats.counts || {};
      for (const status of STATUSES) $(`count-${status}`).textContent = fmtInt(counts[status] ?? 0);
      $('stat-ready').textContent = fmtInt(stats.ready);
      $('stat-delayed').textContent = fmtInt(stats.delayed);
      $('stat-in-flight').textContent = fmtInt(stats.in_flight);
      $('stat-oldest-age').textContent = fmtAge(stats.oldest_ready_age_s);
      drawSparkline(stats.throughput || {});
      setPaused(Boolean(stats.paused));
      show($('stats-error'), '');
      return true;
    } catch (e) {
      if (e.status === 401 || seq !== state.statsSeq) return false;
      show($('stats-error'), `Statistics are unavailable: ${e.message}`);
      try {
        setPaused(Boolean((await api('GET', '/health')).paused)); // /health also says whether paused
      } catch {
        // a 503 from /health: the pause button keeps what it last knew
      }
      return false;
    }
  }

  function drawSparkline(throughput) {
    const perMinute = Array.isArray(throughput.per_minute) ? throughput.per_minute.map((n) => Number(n) || 0) : [];
    $('throughput-last-minute').textContent = fmtInt(throughput.last_minute);
    $('throughput-last-hour').textContent = fmtInt(throughput.last_hour);
    const width = 300;
    const height = 60;
    const peak = Math.max(0, ...perMinute);
    const svg = svgEl('svg', {
      viewBox: `0 0 ${width} ${height}`,
      preserveAspectRatio: 'none',
      class: 'spark-svg',
      role: 'img',
      'data-testid': 'sparkline',
    });
    const title = svgEl('title');
    title.textContent = `Tasks finished per minute over the last hour, oldest first; peak ${peak} per minute`;
    svg.append(title);
    svg.append(svgEl('line', { x1: 0, y1: height - 1, x2: width, y2: height - 1, class: 'spark-base' }));
    if (perMinute.length > 1) {
      const step = width / (perMinute.length - 1);
      const y = (n) => (height - 3 - (n / Math.max(peak, 1)) * (height - 8)).toFixed(1);
      const points = perMinute.map((n, i) => `${(i * step).toFixed(1)},${y(n)}`).join(' ');
      svg.append(svgEl('polygon', { points: `0,${height} ${points} ${width},${height}`, class: 'spark-area' }));
      svg.append(svgEl('polyline', { points, class: 'spark-line' }));
    }
    $('throughput-spark').replaceChildren(svg);
    $('throughput-peak').textContent = `peak ${fmtInt(peak)}/min`;
  }

  // ---- the task list -------------------------------------------------------------------------

  function listQuery() {
    const query = new URLSearchParams();
    const status = $('filter-status').value;
    const action = $('filter-action').value.trim();
    if (status) query.set('status', status);
    if (action) query.set('action', action);
    query.set('limit', $('filter-limit').value);
    if (state.cursor) query.set('cursor', state.cursor);
    return query.toString();
  }

  async function loadTasks() {
    const seq = ++state.listSeq;
    try {
      const page = await api('GET', `/tasks?${listQuery()}`);
      if (seq !== state.listSeq) return false;
      state.nextCursor = page.next_cursor || null;
      renderRows(page.tasks || []);
      show($('list-error'), '');
      return true;
    } catch (e) {
      if (seq === state.listSeq && e.status !== 401) show($('list-error'), `Tasks are unavailable: ${e.message}`);
      return false;
    } finally {
      if (seq === state.listSeq) updatePager();
    }
  }

  function renderRows(tasks) {
    const focused = document.activeElement?.closest?.('#task-rows tr')?.dataset.id;
    const rows = tasks.map((task) => {
      const open = el('button', { type: 'button', class: 'link', title: task.id, 'aria-label': `Open task ${task.id}` }, [
        shortId(task.id),
      ]);
      const row = el('tr', { 'data-testid': 'task-row', 'data-id': task.id, 'data-status': task.status }, [
        el('td', { class: 'cell-id' }, [open]),
        el('td', { class: 'cell-action' }, [String(task.action)]),
        el('td', {}, [statusBadge(task.status)]),
        el('td', { class: 'num' }, [String(task.attempts ?? '')]),
        el('td', { class: 'num col-priority' }, [String(task.priority ?? '–')]),
        el('td', { class: 'col-created' }, [el('time', { datetime: task.created_at }, [fmtTime(task.created_at)])]),
      ]);
      row.classList.toggle('selected', task.id === state.selected);
      row.addEventListener('click', () => {
        openDetail(task.id);
        if (window.matchMedia('(max-width: 1000px)').matches) $('detail').scrollIntoView({ block: 'start' });
      });
      return row;
    });
    $('task-rows').replaceChildren(...rows);
    $('task-empty').hidden = tasks.length > 0;
    if (focused) rows.find((row) => row.dataset.id === focused)?.querySelector('button')?.focus();
  }

  function updatePager() {
    $('page-next').disabled = !state.nextCursor;
    $('page-newer').disabled = state.before.length === 0;
    $('page-first').disabled = state.cursor === null;
    $('page-info').textContent = `Page ${state.before.length + 1}`;
  }

  function resetPaging() {
    state.before = [];
    state.cursor = null;
    state.nextCursor = null;
    for (const card of document.querySelectorAll('.card')) {
      card.classList.toggle('active', card.dataset.status === $('filter-status').value);
    }
    loadTasks();
  }

  $('page-next').addEventListener('click', () => {
    if (!state.nextCursor) return;
    state.before.push(state.cursor);
    state.cursor = state.nextCursor;
    loadTasks();
  });
  $('page-newer').addEventListener('click', () => {
    if (state.before.length === 0) return;
    state.cursor = state.before.pop();
    loadTasks();
  });
  $('page-first').addEventListener('click', resetPaging);

  let actionTyping = null;
  $('filters').addEventListener('submit', (ev) => {
    ev.preventDefault();
    resetPaging();
  });
  $('filter-status').addEventListener('change', resetPaging);
  $('filter-limit').addEventListener('change', resetPaging);
  $('filter-action').addEventListener('input', () => {
    clearTimeout(actionTyping);
    actionTyping = setTimeout(resetPaging, 300);
  });
  for (const card of document.querySelectorAll('.card')) {
    card.addEventListener('click', () => {
      const select = $('filter-status');
      select.value = select.value === card.dataset.status ? '' : card.dataset.status;
      resetPaging();
    });
  }

  // ---- the detail panel --------------------------------------------------------------------

  async function openDetail(id) {
    state.selected = id;
    show($('detail-message'), '');
    for (const row of $('task-rows').children) row.classList.toggle('selected', row.dataset.id === id);
    await loadDetail();
  }

  async function loadDetail() {
    const id = state.selected;
    if (!id) return true;
    const seq = ++state.detailSeq;
    try {
      const task = await api('GET', `/tasks/${encodeURIComponent(id)}`);
      if (seq === state.detailSeq && id === state.selected) renderDetail(task);
      return true;
    } catch (e) {
      if (seq === state.detailSeq && e.status !== 401) show($('detail-message'), e.message);
      return false;
    }
  }

  function renderDetail(task) {
    $('detail-placeholder').hidden = true;
    $('detail-body').hidden = false;
    $('detail-close').hidden = false;
    $('detail-id').textContent = task.id;
    statusBadge(task.status, $('detail-status'));
    $('detail-action').textContent = task.action;
    $('detail-attempts').textContent = String(task.attempts);
    $('detail-priority').textContent = String(task.priority ?? '—');
    $('detail-run-at').textContent = fmtTime(task.run_at);
    $('detail-created-at').textContent = fmtTime(task.created_at);
    $('detail-started-at').textContent = fmtTime(task.started_at);
    $('detail-processed-at').textContent = fmtTime(task.processed_at);
    $('detail-data').textContent = pretty(task.data ?? {});
    $('detail-result').textContent = task.result == null ? '—' : pretty(task.result);
    $('detail-error').textContent = task.error || '—';
    const errors = Array.isArray(task.errors) ? task.errors : [];
    $('detail-errors').replaceChildren(
      ...errors.map((e) =>
        el('li', { 'data-testid': 'attempt-error' }, [
          el('span', { class: 'attempt-meta' }, [`Attempt ${e.attempt} · ${fmtTime(e.failed_at)}`]),
          el('span', { class: 'attempt-text' }, [String(e.error)]),
        ]),
      ),
    );
    $('detail-errors-empty').hidden = errors.length > 0;
    $('detail-cancel').hidden = !['queued', 'running'].includes(task.status);
    $('detail-retry').hidden = !['failed', 'cancelled'].includes(task.status);
  }

  function closeDetail() {
    state.selected = null;
    state.detailSeq++;
    $('detail-placeholder').hidden = false;
    $('detail-body').hidden = true;
    $('detail-close').hidden = true;
    show($('detail-message'), '');
    for (const row of $('task-rows').children) row.classList.remove('selected');
  }

  async function control(kind) {
    const id = state.selected;
    if (!id) return;
    const button = $(`detail-${kind}`);
    button.disabled = true;
    show($('detail-message'), '');
    try {
      await api('POST', `/tasks/${encodeURIComponent(id)}/${kind}`);
      flash(`Task ${shortId(id)} ${kind === 'cancel' ? 'cancelled' : 'queued again'}.`);
    } catch (e) {
      if (e.status !== 401) show($('detail-message'), `Could not ${kind}: ${e.message}`);
    } finally {
      button.disabled = false;
    }
    refresh();
  }

  $('detail-cancel').addEventListener('click', () => control('cancel'));
  $('detail-retry').addEventListener('click', () => control('retry'));
  $('detail-close').addEventListener('click', closeDetail);

  // ---- submitting --------------------------------------------------------------------------

  function readInteger(input, label) {
    const raw = input.value.trim();
    if (raw === '') return input.validity.badInput ? `${label} must be a whole number.` : undefined;
    const n = Number(raw);
    return Number.isSafeInteger(n) ? n : `${label} must be a whole number.`;
  }

  function parseSubmit() {
    const action = $('submit-action').value.trim();
    if (!action) return 'Enter an action, such as uppercase.';
    let data;
    try {
      data = JSON.parse($('submit-data').value.trim() || '{}');
    } catch (e) {
      return `Data is not valid JSON: ${e.message}`;
    }
    if (data === null || typeof data !== 'object' || Array.isArray(data)) {
      return 'Data must be a JSON object, such as {"text": "hi"}.';
    }
    const body = { action, data };
    const priority = readInteger($('submit-priority'), 'Priority');
    const delay = readInteger($('submit-delay'), 'Delay');
    for (const value of [priority, delay]) if (typeof value === 'string') return value;
    if (delay !== undefined && delay < 0) return 'Delay cannot be negative.';
    if (priority !== undefined) body.priority = priority;
    if (delay !== undefined) body.delay_ms = delay;
    return body;
  }

  $('submit-form').addEventListener('submit', async (ev) => {
    ev.preventDefault();
    show($('submit-result'), '');
    const body = parseSubmit();
    if (typeof body === 'string') {
      show($('submit-error'), body);
      return;
    }
    show($('submit-error'), '');
    const button = $('submit-button');
    button.disabled = true;
    try {
      const answer = await api('POST', '/tasks', body);
      show($('submit-result'), `Submitted task ${answer.id} (${answer.status}).`);
      await openDetail(answer.id);
      refresh();
    } catch (e) {
      if (e.status !== 401) show($('submit-error'), `Not submitted: ${e.message}`);
    } finally {
      button.disabled = false;
    }
  });

  // ---- queue-wide actions ------------------------------------------------------------------

  $('pause-toggle').addEventListener('click', async () => {
    const button = $('pause-toggle');
    button.disabled = true;
    try {
      const answer = await api('POST', state.paused ? '/queue/resume' : '/queue/pause');
      setPaused(Boolean(answer.paused));
      flash(answer.paused ? 'Queue paused: no new task starts until resumed.' : 'Queue resumed.');
    } catch (e) {
      if (e.status !== 401) flash(`Could not change the pause: ${e.message}`, true);
    } finally {
      button.disabled = false;
    }
  });

  $('retry-failed').addEventListener('click', async () => {
    const button = $('retry-failed');
    button.disabled = true;
    try {
      const preview = await api('POST', '/tasks/bulk/retry?status=failed&dry_run=true');
      if (!preview.count) {
        flash('There are no failed tasks to retry.');
        return;
      }
      if (!window.confirm(`Retry ${plural(preview.count, 'failed task')}?`)) return;
      const answer = await api('POST', '/tasks/bulk/retry?status=failed');
      flash(`${plural(answer.count, 'failed task')} queued again.`);
      refresh();
    } catch (e) {
      if (e.status === 404 || e.status === 405) flash('Retry all failed: this service does not offer it.', true);
      else if (e.status !== 401) flash(`Retry all failed: ${e.message}`, true);
    } finally {
      button.disabled = false;
    }
  });

  // ---- refreshing ----------------------------------------------------------------------------

  function stopTimer() {
    clearTimeout(state.timer);
    state.timer = null;
  }

  function schedule() {
    stopTimer();
    if (!document.hidden && !state.authNeeded) state.timer = setTimeout(refresh, REFRESH_MS);
  }

  async function refresh() {
    stopTimer();
    if (state.authNeeded) return;
    document.body.dataset.refreshing = String(++state.refreshing > 0); // for tests: wait until false
    const [, listed] = await Promise.all([loadStats(), loadTasks(), loadDetail()]);
    document.body.dataset.refreshing = String(--state.refreshing > 0);
    if (listed) {
      const now = new Date();
      $('last-updated').textContent = now.toLocaleTimeString();
      $('last-updated').setAttribute('datetime', now.toISOString());
    }
    schedule();
  }

  document.addEventListener('visibilitychange', () => (document.hidden ? stopTimer() : refresh()));
  $('pause-toggle').disabled = true; // until the pause is known
  updatePager();
  showSignOut();
  refresh();
})();
