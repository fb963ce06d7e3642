// magistral operator console. Plain script, no libraries: it calls the gateway's JSON API with
// the session cookie (and the CSRF token on every state-changing call) and draws what it gets.
// Text reaches the page only through textContent and attributes, never as HTML.
'use strict';

const I18N = {
  en: {
    skip: 'Skip to content', language: 'Language', signout: 'Sign out', signedInAs: 'Signed in as {0}',
    'nav.overview': 'Overview', 'nav.lookup': 'Find a message', 'nav.tail': 'Live tail',
    'nav.contracts': 'Contracts and directories',
    'signin.title': 'Sign in to the console', 'signin.token': 'Admin participant token', 'signin.submit': 'Sign in',
    'signin.hint': 'Only participants marked admin may use the console.',
    'signin.unknown': 'Unknown token.', 'signin.forbidden': 'This participant is not an admin: the console is refused.',
    'err.generic': 'The gateway answered {0}: {1}', 'err.network': 'The gateway cannot be reached.',
    'ov.health': 'Health', 'ov.nats': 'NATS', 'ov.ready': 'Readiness', 'ov.server': 'Server', 'ov.cluster': 'Cluster peers',
    'ov.ready.yes': 'ready', 'ov.ready.no': 'not ready', 'ov.connected': 'connected', 'ov.disconnected': 'disconnected',
    'ov.subs': 'Subscriptions', 'ov.streams': 'Streams', 'ov.participants': 'Participants', 'ov.deadTotal': 'Dead letters',
    'ov.failingCount': 'Failing subscriptions', 'ov.updated': 'Updated {0}',
    'col.name': 'Name', 'col.participant': 'Participant', 'col.mode': 'Mode', 'col.state': 'State', 'col.lag': 'Lag (pending)',
    'col.inflight': 'In flight', 'col.rate': 'Delivered / failed per minute', 'col.dead': 'Dead letters',
    'col.lastError': 'Last error', 'col.subjects': 'Subjects', 'col.messages': 'Messages', 'col.bytes': 'Size',
    'col.consumers': 'Consumers', 'col.msgRate': 'Messages per minute', 'col.admin': 'Admin', 'col.publish': 'Publish',
    'col.subscribe': 'Subscribe', 'col.request': 'Request', 'col.respond': 'Respond', 'col.kv': 'Directories (read / write)',
    'col.id': 'Message id', 'col.subject': 'Subject', 'col.class': 'Class', 'col.status': 'HTTP status',
    'col.attempts': 'Attempts', 'col.at': 'When', 'col.excerpt': 'Response excerpt', 'col.body': 'Body (start)', 'col.actions': 'Actions',
    'col.version': 'Version', 'col.publishers': 'Publishers', 'col.receivers': 'Receivers', 'col.key': 'Key',
    'col.owner': 'Owner', 'col.time': 'Time', 'col.type': 'Type', 'col.size': 'Size', 'col.source': 'Publisher',
    'state.active': 'active', 'state.paused': 'paused', 'state.breaker-open': 'breaker open', 'state.failing': 'failing',
    'state.endpoint-gone': 'endpoint gone', 'state.unknown': 'unknown', 'state.parked-keys': 'parked keys',
    'state.since': 'since {0}', 'ov.parked': '{0} key(s) parked',
    'chart.label': '{0} delivered, {1} failed per minute (this replica)',
    'ov.perReplica': 'Rates and the failing state are those of the gateway replica that answered (behind a load balancer, one of several); counts of messages, lag and dead letters are the whole bus\'s.',
    'sub.title': 'Subscription {0}', 'sub.back': 'Back to the overview', 'sub.facts': 'Details', 'sub.endpoint': 'Endpoint',
    'sub.breaker': 'Circuit breaker', 'sub.nextProbe': 'Next probe', 'sub.pausedReason': 'Paused because',
    'sub.pause': 'Pause delivery', 'sub.resume': 'Resume delivery', 'sub.failures': 'Recent failures',
    'sub.noFailures': 'No failures recorded.', 'sub.dead': 'Dead letters ({0})', 'sub.noDead': 'No dead letters.',
    'sub.replay': 'Replay', 'sub.discard': 'Discard', 'sub.replayAll': 'Replay all', 'sub.discardAll': 'Discard all',
    'sub.replayOne': 'Replay message {0}', 'sub.discardOne': 'Discard message {0}', 'sub.more': 'Show more',
    'sub.confirmDiscard': 'Discard {0} dead letter(s) for good?', 'sub.replayed': '{0} message(s) sent back for delivery.',
    'sub.discarded': '{0} dead letter(s) discarded.', 'sub.paused': 'Delivery paused.', 'sub.resumed': 'Delivery resumed.',
    'sub.lastError': 'Last error', 'sub.detail': 'Detail', 'sub.notFound': 'No such subscription.',
    'sub.parked': 'Parked keys ({0})', 'sub.noParked': 'No keys parked.', 'sub.skip': 'Skip', 'sub.retry': 'Retry now',
    'sub.skipOne': 'Skip key {0}: dead-letter its head message and let the rest through', 'sub.retryOne': 'Retry key {0} now',
    'sub.confirmSkip': 'Skip key {0}? Its head message goes to the dead letters and the key moves on.',
    'sub.skipped': 'Key {0} skipped: {1} dead-lettered.', 'sub.retried': 'Key {0}: {1} is being attempted again.',
    'col.waiting': 'Waiting behind', 'col.since': 'Since', 'col.keyState': 'Key state',
    'key.parked': 'parked: waits for skip or retry', 'key.retrying': 'retrying',
    'lookup.replayed': 'replayed from the dead letters · {0}', 'lookup.replays': 'replayed {0} time(s)',
    'lookup.title': 'Find a message', 'lookup.by': 'Search by', 'lookup.byId': 'Message id',
    'lookup.byCorrelation': 'Correlation id', 'lookup.value': 'Id to find', 'lookup.find': 'Find',
    'lookup.none': 'Nothing found (or not visible).', 'lookup.timeline': 'Timeline', 'lookup.stored': 'Stored in {0} (#{1})',
    'lookup.published': 'Published on {0} by {1}',
    'ds.pending': 'pending', 'ds.in-flight': 'in flight', 'ds.retrying': 'retrying', 'ds.blocked': 'blocked',
    'ds.paused': 'paused', 'ds.dead-letter': 'dead letter', 'ds.delivered': 'delivered', 'ds.acked': 'acked',
    'ds.terminated': 'terminated', 'ds.skipped': 'skipped', 'ds.live-only': 'live only', 'ds.unknown': 'unknown',
    'lookup.attempts': '{0} attempt(s)', 'lookup.next': 'next attempt {0}',
    'tail.title': 'Live tail', 'tail.subject': 'Subject or pattern', 'tail.start': 'Start', 'tail.stop': 'Stop',
    'tail.pause': 'Pause', 'tail.resume': 'Resume', 'tail.filter': 'Filter shown messages',
    'tail.waiting': 'Waiting for messages…', 'tail.buffered': '{0} message(s) held while paused',
    'tail.stopped': 'Not running.', 'tail.running': 'Receiving {0}',
    'ct.title': 'Contracts', 'ct.schema': 'Show schema {0} v{1}', 'ct.dirs': 'Directories', 'ct.keys': 'Keys of {0}',
    'ct.showKeys': 'Show keys of {0}', 'ct.value': 'Value of {0}', 'ct.none': 'None.', 'ct.revision': 'revision {0}',
    yes: 'yes', no: 'no', none: '—',
  },
  ru: {
    skip: 'К содержимому', language: 'Язык', signout: 'Выйти', signedInAs: 'Вы вошли как {0}',
    'nav.overview': 'Обзор', 'nav.lookup': 'Найти сообщение', 'nav.tail': 'Поток сообщений',
    'nav.contracts': 'Контракты и справочники',
    'signin.title': 'Вход в консоль', 'signin.token': 'Токен участника-администратора', 'signin.submit': 'Войти',
    'signin.hint': 'Консолью могут пользоваться только участники с правами администратора.',
    'signin.unknown': 'Неизвестный токен.', 'signin.forbidden': 'Этот участник не администратор: вход в консоль запрещён.',
    'err.generic': 'Шлюз ответил {0}: {1}', 'err.network': 'Шлюз недоступен.',
    'ov.health': 'Состояние', 'ov.nats': 'NATS', 'ov.ready': 'Готовность', 'ov.server': 'Сервер', 'ov.cluster': 'Узлы кластера',
    'ov.ready.yes': 'готов', 'ov.ready.no': 'не готов', 'ov.connected': 'подключён', 'ov.disconnected': 'нет связи',
    'ov.subs': 'Подписки', 'ov.streams': 'Потоки', 'ov.participants': 'Участники', 'ov.deadTotal': 'Недоставленные',
    'ov.failingCount': 'Подписки с ошибками', 'ov.updated': 'Обновлено {0}',
    'col.name': 'Имя', 'col.participant': 'Участник', 'col.mode': 'Режим', 'col.state': 'Состояние', 'col.lag': 'Отставание (ждут)',
    'col.inflight': 'В обработке', 'col.rate': 'Доставлено / ошибок в минуту', 'col.dead': 'Недоставленные',
    'col.lastError': 'Последняя ошибка', 'col.subjects': 'Темы', 'col.messages': 'Сообщения', 'col.bytes': 'Объём',
    'col.consumers': 'Потребители', 'col.msgRate': 'Сообщений в минуту', 'col.admin': 'Админ', 'col.publish': 'Публикует',
    'col.subscribe': 'Подписан', 'col.request': 'Запрашивает', 'col.respond': 'Отвечает', 'col.kv': 'Справочники (чтение / запись)',
    'col.id': 'Идентификатор', 'col.subject': 'Тема', 'col.class': 'Класс', 'col.status': 'HTTP-статус',
    'col.attempts': 'Попытки', 'col.at': 'Когда', 'col.excerpt': 'Фрагмент ответа', 'col.body': 'Начало сообщения', 'col.actions': 'Действия',
    'col.version': 'Версия', 'col.publishers': 'Публикуют', 'col.receivers': 'Получают', 'col.key': 'Ключ',
    'col.owner': 'Владелец', 'col.time': 'Время', 'col.type': 'Тип', 'col.size': 'Размер', 'col.source': 'Отправитель',
    'state.active': 'работает', 'state.paused': 'приостановлена', 'state.breaker-open': 'размыкатель открыт',
    'state.failing': 'ошибки', 'state.endpoint-gone': 'адрес удалён', 'state.unknown': 'неизвестно',
    'state.parked-keys': 'ключи отложены', 'state.since': 'с {0}', 'ov.parked': 'отложено ключей: {0}',
    'chart.label': 'доставлено {0}, ошибок {1} в минуту (эта реплика)',
    'ov.perReplica': 'Скорости и состояние «ошибки» — той реплики шлюза, что ответила (за балансировщиком их может быть несколько); число сообщений, отставание и недоставленные — по всей шине.',
    'sub.title': 'Подписка {0}', 'sub.back': 'Назад к обзору', 'sub.facts': 'Сведения', 'sub.endpoint': 'Адрес',
    'sub.breaker': 'Размыкатель', 'sub.nextProbe': 'Следующая проба', 'sub.pausedReason': 'Причина паузы',
    'sub.pause': 'Приостановить доставку', 'sub.resume': 'Возобновить доставку', 'sub.failures': 'Последние ошибки',
    'sub.noFailures': 'Ошибок нет.', 'sub.dead': 'Недоставленные ({0})', 'sub.noDead': 'Недоставленных нет.',
    'sub.replay': 'Повторить', 'sub.discard': 'Удалить', 'sub.replayAll': 'Повторить все', 'sub.discardAll': 'Удалить все',
    'sub.replayOne': 'Повторить сообщение {0}', 'sub.discardOne': 'Удалить сообщение {0}', 'sub.more': 'Показать ещё',
    'sub.confirmDiscard': 'Удалить недоставленные ({0}) навсегда?', 'sub.replayed': 'Отправлено на повторную доставку: {0}.',
    'sub.discarded': 'Удалено недоставленных: {0}.', 'sub.paused': 'Доставка приостановлена.', 'sub.resumed': 'Доставка возобновлена.',
    'sub.lastError': 'Последняя ошибка', 'sub.detail': 'Подробности', 'sub.notFound': 'Такой подписки нет.',
    'sub.parked': 'Отложенные ключи ({0})', 'sub.noParked': 'Отложенных ключей нет.', 'sub.skip': 'Пропустить', 'sub.retry': 'Повторить сейчас',
    'sub.skipOne': 'Пропустить ключ {0}: первое сообщение — в недоставленные, остальные пойдут дальше', 'sub.retryOne': 'Повторить ключ {0} сейчас',
    'sub.confirmSkip': 'Пропустить ключ {0}? Его первое сообщение уйдёт в недоставленные, ключ пойдёт дальше.',
    'sub.skipped': 'Ключ {0} пропущен: {1} в недоставленных.', 'sub.retried': 'Ключ {0}: {1} отправлено снова.',
    'col.waiting': 'Ждут за ним', 'col.since': 'С', 'col.keyState': 'Состояние ключа',
    'key.parked': 'отложен: ждёт пропуска или повтора', 'key.retrying': 'повторяется',
    'lookup.replayed': 'повторено из недоставленных · {0}', 'lookup.replays': 'повторов: {0}',
    'lookup.title': 'Найти сообщение', 'lookup.by': 'Искать по', 'lookup.byId': 'Идентификатор сообщения',
    'lookup.byCorrelation': 'Идентификатор корреляции', 'lookup.value': 'Что искать', 'lookup.find': 'Найти',
    'lookup.none': 'Ничего не найдено (или не видно).', 'lookup.timeline': 'Путь сообщения', 'lookup.stored': 'Сохранено в {0} (№{1})',
    'lookup.published': 'Опубликовано в {0}, отправитель {1}',
    'ds.pending': 'ожидает', 'ds.in-flight': 'в обработке', 'ds.retrying': 'повтор', 'ds.blocked': 'заблокировано',
    'ds.paused': 'на паузе', 'ds.dead-letter': 'недоставлено', 'ds.delivered': 'доставлено', 'ds.acked': 'подтверждено',
    'ds.terminated': 'прекращено', 'ds.skipped': 'пропущено', 'ds.live-only': 'только поток', 'ds.unknown': 'неизвестно',
    'lookup.attempts': 'попыток: {0}', 'lookup.next': 'следующая попытка {0}',
    'tail.title': 'Поток сообщений', 'tail.subject': 'Тема или шаблон', 'tail.start': 'Начать', 'tail.stop': 'Остановить',
    'tail.pause': 'Пауза', 'tail.resume': 'Продолжить', 'tail.filter': 'Фильтр показанных сообщений',
    'tail.waiting': 'Ждём сообщений…', 'tail.buffered': 'Отложено на паузе: {0}',
    'tail.stopped': 'Остановлено.', 'tail.running': 'Получаем {0}',
    'ct.title': 'Контракты', 'ct.schema': 'Показать схему {0} v{1}', 'ct.dirs': 'Справочники', 'ct.keys': 'Ключи {0}',
    'ct.showKeys': 'Показать ключи {0}', 'ct.value': 'Значение {0}', 'ct.none': 'Нет.', 'ct.revision': 'ревизия {0}',
    yes: 'да', no: 'нет', none: '—',
  },
};

const LANG_KEY = 'magistral.console.lang';
let lang = localStorage.getItem(LANG_KEY) || ((navigator.language || 'en').toLowerCase().startsWith('ru') ? 'ru' : 'en');
let session = null; // { participant, csrf_token, expires }
let timer = null; // the current page's refresh
let pageCleanup = null;

function t(key, ...args) {
  const s = (I18N[lang] && I18N[lang][key]) || I18N.en[key] || key;
  return s.replace(/\{(\d)\}/g, (_, i) => String(args[Number(i)]));
}

// Dates in the viewer's time zone, in the chosen language.
function fmtTime(iso) {
  if (!iso) return t('none');
  const d = new Date(iso);
  if (Number.isNaN(d.getTime())) return iso;
  return d.toLocaleString(lang === 'ru' ? 'ru-RU' : 'en-GB', {
    year: 'numeric', month: '2-digit', day: '2-digit', hour: '2-digit', minute: '2-digit', second: '2-digit',
    timeZoneName: 'short',
  });
}

function fmtNum(n) {
  return n === null || n === undefined ? t('none') : Number(n).toLocaleString(lang === 'ru' ? 'ru-RU' : 'en-GB', { maximumFractionDigits: 1 });
}

function fmtBytes(n) {
  if (n === null || n === undefined) return t('none');
  const units = ['B', 'KiB', 'MiB', 'GiB', 'TiB'];
  let i = 0;
  while (n >= 1024 && i < units.length - 1) { n /= 1024; i++; }
  return fmtNum(n) + ' ' + units[i];
}

// A DOM element: el('td', { class: 'x', text: 'y' }, child, ...).
function el(tag, attrs, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === null || v === undefined || v === false) continue;
    if (k === 'text') e.textContent = v;
    else if (k === 'class') e.className = v;
    else if (k.startsWith('on')) e.addEventListener(k.slice(2), v);
    else e.setAttribute(k, v === true ? '' : v);
  }
  for (const c of children.flat()) {
    if (c === null || c === undefined || c === false) continue;
    e.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return e;
}

const SVG = 'http://www.w3.org/2000/svg';
function svg(tag, attrs) {
  const e = document.createElementNS(SVG, tag);
  for (const [k, v] of Object.entries(attrs || {})) e.setAttribute(k, v);
  return e;
}

// Replaces a container's content, keeping keyboard focus on the control with the same key.
function fill(container, ...nodes) {
  const active = document.activeElement;
  const key = active && container.contains(active) ? active.getAttribute('data-key') : null;
  container.replaceChildren(...nodes.flat().filter((n) => n));
  if (key) {
    const again = container.querySelector('[data-key="' + CSS.escape(key) + '"]');
    if (again) again.focus();
  }
}

function toast(text, bad) {
  const box = document.getElementById('toast');
  box.className = bad ? 'bad' : 'good';
  box.textContent = text;
  clearTimeout(toast.timer);
  toast.timer = setTimeout(() => { box.textContent = ''; box.className = ''; }, 6000);
}

class ApiError extends Error {
  constructor(status, problem) {
    super((problem && (problem.detail || problem.title)) || String(status));
    this.status = status;
    this.problem = problem;
  }
}

// The JSON API, as the signed-in participant: the cookie goes along (same origin); the CSRF
// token goes on every state-changing call.
async function api(method, path, body) {
  const headers = { Accept: 'application/json' };
  if (method !== 'GET' && session) headers['X-CSRF-Token'] = session.csrf_token;
  if (body !== undefined) headers['Content-Type'] = 'application/json';
  let r;
  try {
    r = await fetch(path, { method, headers, body: body === undefined ? undefined : JSON.stringify(body), credentials: 'same-origin' });
  } catch (e) {
    throw new ApiError(0, { detail: t('err.network') });
  }
  if (r.status === 204) return null;
  const text = await r.text();
  let data = null;
  try { data = text ? JSON.parse(text) : null; } catch (e) { data = { detail: text }; }
  if (!r.ok) {
    if (r.status === 401 && !path.startsWith('/console/session')) { session = null; showSignIn(); }
    throw new ApiError(r.status, data);
  }
  return data;
}

function errorText(e) {
  if (e instanceof ApiError) return e.status ? t('err.generic', e.status, e.message) : e.message;
  return String(e);
}

function applyStaticText() {
  document.documentElement.lang = lang;
  for (const node of document.querySelectorAll('[data-i18n]')) node.textContent = t(node.getAttribute('data-i18n'));
  document.getElementById('lang').value = lang;
  const who = document.getElementById('who');
  who.textContent = session ? t('signedInAs', session.participant) : '';
}

// --- sign-in -------------------------------------------------------------------------------

function showSignIn(message) {
  stopPage();
  document.getElementById('nav').hidden = true;
  document.getElementById('signout').hidden = true;
  applyStaticText();
  const error = el('p', { id: 'signin-error', class: 'error', role: 'alert', text: message || '' });
  const input = el('input', { id: 'token', type: 'password', name: 'token', autocomplete: 'current-password', required: true });
  const form = el('form', { id: 'signin', class: 'card narrow', onsubmit: async (ev) => {
    ev.preventDefault();
    error.textContent = '';
    try {
      session = await api('POST', '/console/session', { token: input.value });
      input.value = '';
      start();
    } catch (e) {
      error.textContent = e.status === 401 ? t('signin.unknown') : e.status === 403 ? t('signin.forbidden') : errorText(e);
    }
  } },
  el('h1', { text: t('signin.title') }),
  el('p', { class: 'hint', text: t('signin.hint') }),
  el('label', { for: 'token', text: t('signin.token') }), input,
  el('button', { type: 'submit', id: 'signin-submit', text: t('signin.submit') }),
  error);
  fill(document.getElementById('main'), form);
  input.focus();
}

async function start() {
  document.getElementById('nav').hidden = false;
  document.getElementById('signout').hidden = false;
  applyStaticText();
  route();
}

// --- routing -------------------------------------------------------------------------------

function stopPage() {
  clearTimeout(timer);
  timer = null;
  if (pageCleanup) { pageCleanup(); pageCleanup = null; }
}

function every(ms, fn) {
  const tick = async () => {
    try { await fn(); } catch (e) { if (!(e instanceof ApiError && e.status === 401)) toast(errorText(e), true); }
    if (timer !== null) timer = setTimeout(tick, ms);
  };
  timer = 0;
  tick();
}

function route() {
  if (!session) { showSignIn(); return; }
  stopPage();
  const hash = location.hash || '#/overview';
  const [, page, ...rest] = hash.split('/');
  const arg = rest.length ? decodeURIComponent(rest.join('/')) : null;
  for (const a of document.querySelectorAll('#nav a')) {
    if (a.getAttribute('href') === '#/' + page) a.setAttribute('aria-current', 'page');
    else a.removeAttribute('aria-current');
  }
  const main = document.getElementById('main');
  main.replaceChildren();
  // A note about the last page's action does not follow to the next page.
  const box = document.getElementById('toast');
  box.textContent = '';
  box.className = '';
  if (page === 'subscription' && arg) subscriptionPage(main, arg);
  else if (page === 'lookup') lookupPage(main, arg);
  else if (page === 'tail') tailPage(main);
  else if (page === 'contracts') contractsPage(main);
  else overviewPage(main);
}

// --- overview ------------------------------------------------------------------------------

// Samples of each subscription's counters, for the per-minute charts (kept across pages).
const history = new Map(); // name -> { samples: [{t, d, f}], status, lastFail, lastOk }
const streamHistory = new Map(); // name -> [{t, last}]
const KEEP = 30;

function record(name, counts) {
  const now = Date.now();
  let h = history.get(name);
  const d = counts ? counts.delivered : 0;
  const f = counts ? counts.failed : 0;
  if (!h) {
    h = { samples: [] };
    history.set(name, h);
  }
  h.samples.push({ t: now, d, f });
  if (h.samples.length > KEEP + 1) h.samples.shift();
  return h;
}

function rates(samples, key) {
  const out = [];
  for (let i = 1; i < samples.length; i++) {
    const dt = (samples[i].t - samples[i - 1].t) / 60000;
    out.push(dt > 0 ? Math.max(0, (samples[i][key] - samples[i - 1][key]) / dt) : 0);
  }
  return out;
}

function spark(series, labelText) {
  const w = 120, hgt = 28;
  const max = Math.max(1, ...series.flatMap((s) => s.values));
  const box = svg('svg', { width: w, height: hgt, viewBox: `0 0 ${w} ${hgt}`, role: 'img', 'aria-label': labelText, class: 'spark' });
  const title = svg('title', {});
  title.textContent = labelText;
  box.append(title);
  for (const s of series) {
    if (s.values.length === 0) continue;
    const step = w / Math.max(1, KEEP - 1);
    const offset = w - step * (s.values.length - 1);
    const points = s.values.map((v, i) => `${(offset + i * step).toFixed(1)},${(hgt - 2 - (v / max) * (hgt - 4)).toFixed(1)}`);
    if (points.length === 1) points.push(`${w},${points[0].split(',')[1]}`);
    box.append(svg('polyline', { points: points.join(' '), class: s.cls, fill: 'none' }));
  }
  return box;
}

// A subscription's state as operators read it: decided by the gateway (`status`), so the page
// and the API say the same.
function statusOf(sub) {
  return sub.status || 'unknown';
}

function parkedOf(sub) {
  return (sub.ordering && sub.ordering.parked_keys) || [];
}

function badge(status) {
  return el('span', { class: 'badge s-' + status, 'data-status': status, text: t('state.' + status) });
}

function section(id, titleKey, ...body) {
  const h = el('h2', { id: id + '-h', text: t(titleKey) });
  return el('section', { id, 'aria-labelledby': id + '-h' }, h, ...body);
}

function table(id, captionText, headers, rows) {
  return el('table', { id },
    el('caption', { class: 'sr', text: captionText }),
    el('thead', {}, el('tr', {}, headers.map((h) => el('th', { scope: 'col', text: t(h) })))),
    el('tbody', {}, rows));
}

function list(values) {
  return values && values.length ? values.join(', ') : t('none');
}

function overviewPage(main) {
  const health = el('div', { class: 'cards', id: 'health', 'aria-live': 'polite' });
  const subs = el('div', { class: 'scroll' });
  const streams = el('div', { class: 'scroll' });
  const parts = el('div', { class: 'scroll' });
  const updated = el('p', { class: 'hint', id: 'updated' });
  main.append(el('h1', { text: t('nav.overview') }), updated, health,
    section('subscriptions', 'ov.subs', subs), section('streams', 'ov.streams', streams),
    section('participants', 'ov.participants', parts));
  every(3000, async () => {
    const [ready, overview] = await Promise.all([
      fetch('/readyz', { headers: { Accept: 'application/json' } }).then((r) => r.json()).catch(() => null),
      api('GET', '/v1/overview'),
    ]);
    const counts = overview.deliveries || {};
    const rows = [];
    let failing = 0, dead = 0;
    for (const sub of overview.subscriptions) {
      const h = record(sub.name, counts[sub.name]);
      const status = statusOf(sub);
      const parked = parkedOf(sub);
      if (status !== 'active') failing += status === 'paused' ? 0 : 1;
      dead += sub.dead_letters || 0;
      const dr = rates(h.samples, 'd'), fr = rates(h.samples, 'f');
      const lastD = dr.length ? dr[dr.length - 1] : 0, lastF = fr.length ? fr[fr.length - 1] : 0;
      const bad = status !== 'active' && status !== 'paused';
      rows.push(el('tr', { class: bad ? 'failing' : null, 'data-sub': sub.name, 'data-status': status },
        el('th', { scope: 'row' }, el('a', { href: '#/subscription/' + encodeURIComponent(sub.name), 'data-key': 'sub-' + sub.name, text: sub.name })),
        el('td', { text: sub.participant }),
        el('td', { text: sub.mode }),
        el('td', {}, badge(status),
          status === 'failing' && sub.failing_since ? el('span', { class: 'hint', text: ' ' + t('state.since', fmtTime(sub.failing_since)) }) : null,
          parked.length ? el('span', { class: 'parked', 'data-parked': String(parked.length), text: ' · ' + t('ov.parked', parked.length) }) : null),
        el('td', { class: 'num', text: fmtNum(sub.pending) }),
        el('td', { class: 'num', text: fmtNum(sub.in_flight) }),
        el('td', {}, spark([{ values: dr, cls: 'ok' }, { values: fr, cls: 'bad' }], t('chart.label', fmtNum(lastD), fmtNum(lastF)))),
        el('td', { class: 'num', text: fmtNum(sub.dead_letters) }),
        el('td', { class: 'err', text: sub.last_error ? `${sub.last_error.class}${sub.last_error.status ? ' ' + sub.last_error.status : ''} · ${fmtTime(sub.last_error.at)}` : t('none') })));
    }
    fill(subs, table('subs-table', t('ov.subs'),
      ['col.name', 'col.participant', 'col.mode', 'col.state', 'col.lag', 'col.inflight', 'col.rate', 'col.dead', 'col.lastError'], rows),
      el('p', { class: 'hint', id: 'per-replica', text: t('ov.perReplica') }));

    const nats = overview.nats;
    const card = (label, value, bad, id, detail) => el('div', { class: 'card stat' + (bad ? ' alarm' : ''), id },
      el('div', { class: 'label', text: label }), el('div', { class: 'value', text: value }),
      detail ? el('div', { class: 'detail', text: detail }) : null);
    const isReady = ready && ready.status === 'ready';
    const readyDetail = ready ? Object.entries(ready.checks).filter(([, c]) => c.status !== 'ok').map(([k, c]) => `${k}: ${c.detail}`).join('; ') : '';
    fill(health,
      card(t('ov.nats'), `${nats.connected ? t('ov.connected') : t('ov.disconnected')} · ${nats.version || ''}`, !nats.connected, 'card-nats',
        `${t('ov.server')}: ${nats.server_name || t('none')}`),
      card(t('ov.ready'), isReady ? t('ov.ready.yes') : t('ov.ready.no'), !isReady, 'card-ready', readyDetail),
      card(t('ov.cluster'), String((nats.cluster_urls || []).length || 1), false, 'card-cluster'),
      card(t('ov.failingCount'), String(failing), failing > 0, 'card-failing'),
      card(t('ov.deadTotal'), String(dead), dead > 0, 'card-dead'));

    const now = Date.now();
    fill(streams, table('streams-table', t('ov.streams'),
      ['col.name', 'col.subjects', 'col.messages', 'col.bytes', 'col.consumers', 'col.msgRate'],
      overview.streams.map((s) => {
        const hist = streamHistory.get(s.name) || [];
        if (s.last_seq !== undefined) hist.push({ t: now, last: s.last_seq });
        if (hist.length > KEEP + 1) hist.shift();
        streamHistory.set(s.name, hist);
        const r = [];
        for (let i = 1; i < hist.length; i++) r.push(Math.max(0, (hist[i].last - hist[i - 1].last) / ((hist[i].t - hist[i - 1].t) / 60000)));
        return el('tr', { 'data-stream': s.name },
          el('th', { scope: 'row', text: s.name }),
          el('td', { text: list(s.subjects) }),
          el('td', { class: 'num', text: s.error ? s.error : fmtNum(s.messages) }),
          el('td', { class: 'num', text: fmtBytes(s.bytes) }),
          el('td', { class: 'num', text: fmtNum(s.consumers) }),
          el('td', {}, spark([{ values: r, cls: 'ok' }], fmtNum(r.length ? r[r.length - 1] : 0))));
      })));

    fill(parts, table('participants-table', t('ov.participants'),
      ['col.name', 'col.admin', 'col.publish', 'col.subscribe', 'col.request', 'col.respond', 'col.kv'],
      overview.participants.map((p) => el('tr', {},
        el('th', { scope: 'row', text: p.name }),
        el('td', { text: p.admin ? t('yes') : t('no') }),
        el('td', { text: list(p.publish) }), el('td', { text: list(p.subscribe) }),
        el('td', { text: list(p.request) }), el('td', { text: list(p.respond) }),
        el('td', { text: `${list(p.kv_read)} / ${list(p.kv_write)}` })))));
    updated.textContent = t('ov.updated', fmtTime(new Date().toISOString()));
  });
}

// --- subscription --------------------------------------------------------------------------

function subscriptionPage(main, name) {
  const path = '/v1/subscriptions/' + encodeURIComponent(name);
  const head = el('div', { class: 'head' });
  const facts = el('div', { class: 'scroll' });
  const failures = el('div', {});
  const deadBox = el('div', { class: 'scroll' });
  const deadTitle = el('h2', { id: 'dead-h' });
  const parkedBox = el('div', { class: 'scroll' });
  const parkedTitle = el('h2', { id: 'parked-h' });
  const parkedSection = el('section', { id: 'parked', 'aria-labelledby': 'parked-h', hidden: true }, parkedTitle, parkedBox);
  let deadItems = [];
  let pages = 1;
  main.append(
    el('p', {}, el('a', { href: '#/overview', text: t('sub.back') })),
    head, section('facts', 'sub.facts', facts), section('failures', 'sub.failures', failures), parkedSection,
    el('section', { id: 'dead', 'aria-labelledby': 'dead-h' }, deadTitle, deadBox));

  async function act(method, suffix, body, done) {
    try {
      const r = await api(method, path + suffix, body);
      toast(done(r));
      await refresh();
    } catch (e) { toast(errorText(e), true); }
  }
  const replay = (sel) => act('POST', '/dead-letters/replay', sel, (r) => t('sub.replayed', r.replayed));
  // A parked key: skip dead-letters its head message and lets the key move on; retry attempts
  // the head message now. Both as the signed-in participant, with the CSRF token (see api()).
  const skipKey = (key) => {
    if (!window.confirm(t('sub.confirmSkip', key))) return;
    act('POST', '/parked-keys/skip', { key }, (r) => t('sub.skipped', r.key, r.message_id));
  };
  const retryKey = (key) => act('POST', '/parked-keys/retry', { key }, (r) => t('sub.retried', r.key, r.message_id));
  const discard = (sel, n) => {
    if (!window.confirm(t('sub.confirmDiscard', n))) return;
    act('POST', '/dead-letters/discard', sel, (r) => t('sub.discarded', r.discarded));
  };

  async function refresh() {
    let sub;
    try { sub = await api('GET', path); } catch (e) {
      if (e.status === 404) { fill(head, el('h1', { text: t('sub.notFound') })); stopPage(); return; }
      throw e;
    }
    const status = statusOf(sub);
    const paused = sub.state === 'paused';
    fill(head,
      el('h1', {}, t('sub.title', sub.name), ' ', badge(status)),
      el('div', { class: 'actions' },
        paused
          ? el('button', { type: 'button', id: 'resume', 'data-key': 'resume', text: t('sub.resume'), onclick: () => act('POST', '/resume', undefined, () => t('sub.resumed')) })
          : el('button', { type: 'button', id: 'pause', 'data-key': 'pause', text: t('sub.pause'), onclick: () => act('POST', '/pause', undefined, () => t('sub.paused')) })));
    const row = (k, v) => el('tr', {}, el('th', { scope: 'row', text: t(k) }), el('td', { text: v }));
    fill(facts, el('table', { class: 'facts' }, el('tbody', {},
      row('col.participant', sub.participant), row('col.mode', sub.mode), row('sub.endpoint', sub.endpoint || t('none')),
      row('col.subjects', list(sub.subjects)), row('col.lag', fmtNum(sub.pending)), row('col.inflight', fmtNum(sub.in_flight)),
      row('sub.breaker', sub.breaker || t('none')), row('sub.nextProbe', sub.breaker_next_probe ? fmtTime(sub.breaker_next_probe) : t('none')),
      paused ? row('sub.pausedReason', `${sub.paused_reason || ''} · ${fmtTime(sub.paused_at)}`) : null)));

    // Key-ordered subscriptions: the keys waiting for an operator (or for their next attempt).
    parkedSection.hidden = !sub.ordering;
    if (sub.ordering) {
      const parked = parkedOf(sub);
      parkedTitle.textContent = t('sub.parked', parked.length);
      const keyRows = parked.map((k) => el('tr', { 'data-key-name': k.key, 'data-key-state': k.state },
        el('th', { scope: 'row', class: 'mono', text: k.key }), el('td', { class: 'mono', text: k.message_id }),
        el('td', { text: t('key.' + (k.state === 'parked' ? 'parked' : 'retrying')) }),
        el('td', { class: 'num', text: fmtNum(k.attempts) }),
        el('td', { text: k.last_error ? `${k.last_error.class}${k.last_error.status ? ' ' + k.last_error.status : ''}` : t('none') }),
        el('td', { text: fmtTime(k.since) }), el('td', { class: 'num', text: fmtNum(k.waiting) }),
        el('td', { class: 'actions' },
          el('button', { type: 'button', class: 'retry-key', 'data-key': 'retry-key-' + k.key, 'aria-label': t('sub.retryOne', k.key), text: t('sub.retry'), onclick: () => retryKey(k.key) }),
          el('button', { type: 'button', class: 'skip-key danger', 'data-key': 'skip-key-' + k.key, 'aria-label': t('sub.skipOne', k.key), text: t('sub.skip'), onclick: () => skipKey(k.key) }))));
      fill(parkedBox, parked.length
        ? table('parked-table', t('sub.parked', parked.length),
          ['col.key', 'col.id', 'col.keyState', 'col.attempts', 'col.class', 'col.since', 'col.waiting', 'col.actions'], keyRows)
        : el('p', { text: t('sub.noParked') }));
    }

    const page = await api('GET', `${path}/dead-letters?limit=${50 * pages}`);
    deadItems = page.dead_letters;
    deadTitle.textContent = t('sub.dead', page.total);
    const recent = [];
    if (sub.last_error) {
      const e = sub.last_error;
      recent.push(el('li', { class: 'failure' }, el('strong', { text: `${e.class}${e.status ? ' ' + e.status : ''}` }),
        ` · ${fmtTime(e.at)} · ${t('col.attempts')}: ${e.attempt} · `, el('span', { class: 'detail', text: e.detail })));
    }
    for (const d of deadItems.slice(-5).reverse()) {
      recent.push(el('li', { class: 'failure' }, el('strong', { text: `${d.class || ''}${d.status ? ' ' + d.status : ''}` }),
        ` · ${fmtTime(d.last_attempt || d.dead_lettered_at)} · ${d.id} · `, el('span', { class: 'detail', text: d.response_excerpt || '' })));
    }
    fill(failures, recent.length ? el('ul', { class: 'failures' }, recent) : el('p', { text: t('sub.noFailures') }));

    const rows = deadItems.map((d) => el('tr', { 'data-id': d.id },
      el('td', { class: 'mono', text: d.id }), el('td', { text: d.subject }), el('td', { text: d.class || t('none') }),
      el('td', { class: 'num', text: d.status || t('none') }), el('td', { class: 'num', text: fmtNum(d.attempts) }),
      el('td', { text: fmtTime(d.dead_lettered_at) }), el('td', { class: 'detail', text: d.response_excerpt || '' }),
      el('td', { class: 'actions' },
        el('button', { type: 'button', class: 'replay', 'data-key': 'replay-' + d.dlq_seq, 'aria-label': t('sub.replayOne', d.id), text: t('sub.replay'), onclick: () => replay({ ids: ['dlq-' + d.dlq_seq] }) }),
        el('button', { type: 'button', class: 'discard danger', 'data-key': 'discard-' + d.dlq_seq, 'aria-label': t('sub.discardOne', d.id), text: t('sub.discard'), onclick: () => discard({ ids: ['dlq-' + d.dlq_seq] }, 1) }))));
    fill(deadBox,
      page.total ? el('div', { class: 'actions' },
        el('button', { type: 'button', id: 'replay-all', 'data-key': 'replay-all', text: t('sub.replayAll'), onclick: () => replay({ all: true }) }),
        el('button', { type: 'button', id: 'discard-all', class: 'danger', 'data-key': 'discard-all', text: t('sub.discardAll'), onclick: () => discard({ all: true }, page.total) })) : null,
      page.total ? table('dead-table', t('sub.dead', page.total),
        ['col.id', 'col.subject', 'col.class', 'col.status', 'col.attempts', 'col.at', 'col.excerpt', 'col.actions'], rows) : el('p', { text: t('sub.noDead') }),
      page.next ? el('button', { type: 'button', 'data-key': 'more', text: t('sub.more'), onclick: () => { pages++; refresh(); } }) : null);
  }
  every(3000, refresh);
}

// --- message lookup ------------------------------------------------------------------------

function lookupPage(main, initial) {
  const result = el('div', { id: 'lookup-result', 'aria-live': 'polite' });
  const byId = el('input', { type: 'radio', name: 'by', id: 'by-id', value: 'id', checked: true });
  const byCorr = el('input', { type: 'radio', name: 'by', id: 'by-correlation', value: 'correlation' });
  const value = el('input', { type: 'text', id: 'lookup-value', required: true, value: initial || '' });
  const form = el('form', { id: 'lookup', class: 'card', onsubmit: async (ev) => {
    ev.preventDefault();
    const v = value.value.trim();
    if (!v) return;
    fill(result);
    try {
      const messages = byId.checked
        ? [await api('GET', '/v1/messages/' + encodeURIComponent(v))]
        : (await api('GET', '/v1/messages?correlation_id=' + encodeURIComponent(v))).messages;
      fill(result, messages.length ? messages.map(timeline) : el('p', { text: t('lookup.none') }));
    } catch (e) {
      fill(result, el('p', { class: e.status === 404 ? '' : 'error', text: e.status === 404 ? t('lookup.none') : errorText(e) }));
    }
  } },
  el('fieldset', {}, el('legend', { text: t('lookup.by') }),
    el('label', {}, byId, ' ', t('lookup.byId')), el('label', {}, byCorr, ' ', t('lookup.byCorrelation'))),
  el('label', { for: 'lookup-value', text: t('lookup.value') }), value,
  el('button', { type: 'submit', id: 'lookup-submit', text: t('lookup.find') }));
  main.append(el('h1', { text: t('lookup.title') }), form, result);
  value.focus();
  if (initial) form.requestSubmit();
}

function timeline(m) {
  const steps = [
    el('li', { class: 'step' }, el('strong', { text: fmtTime(m.time) }), ' · ', t('lookup.published', m.subject, m.publisher || t('none'))),
    el('li', { class: 'step' }, t('lookup.stored', m.stream, m.seq)),
  ];
  for (const s of m.subscriptions) {
    // Replayed from the dead letters: the dead letter and the replay come before the outcome
    // the record holds now (which is the replay's).
    if (s.replays) {
      steps.push(el('li', { class: 'step ds-dead-letter', 'data-subscription': s.name, 'data-state': 'dead-letter' },
        s.name, ' ', el('span', { class: 'badge ds', text: t('ds.dead-letter') })));
      steps.push(el('li', { class: 'step replay', 'data-subscription': s.name, 'data-replays': String(s.replays) },
        s.name, ' · ', t('lookup.replayed', fmtTime(s.replayed_at)), s.replays > 1 ? ' · ' + t('lookup.replays', s.replays) : ''));
    }
    const bits = [];
    if (s.attempts !== undefined && s.attempts !== null) bits.push(t('lookup.attempts', s.attempts));
    if (s.class) bits.push(`${s.class}${s.status ? ' ' + s.status : ''}`);
    if (s.last_error) bits.push(`${s.last_error.class || ''}${s.last_error.status ? ' ' + s.last_error.status : ''} · ${fmtTime(s.last_error.at)}`);
    if (s.next_attempt) bits.push(t('lookup.next', fmtTime(s.next_attempt)));
    if (s.detail) bits.push(s.detail);
    if (s.at) bits.push(fmtTime(s.at));
    steps.push(el('li', { class: 'step ds-' + s.state, 'data-subscription': s.name, 'data-state': s.state },
      el('a', { href: '#/subscription/' + encodeURIComponent(s.name), text: s.name }), ' (', s.participant, ') ',
      el('span', { class: 'badge ds', text: t('ds.' + s.state) }), bits.length ? ' · ' + bits.join(' · ') : ''));
  }
  return el('article', { class: 'card message', 'data-id': m.id || '' },
    el('h2', {}, el('span', { class: 'mono', text: m.id || t('none') }), ' ', el('span', { class: 'hint', text: m.type || '' })),
    m.correlation_id ? el('p', { class: 'hint', text: `${t('lookup.byCorrelation')}: ${m.correlation_id}` }) : null,
    el('h3', { text: t('lookup.timeline') }), el('ol', { class: 'timeline' }, steps));
}

// --- live tail -----------------------------------------------------------------------------

function tailPage(main) {
  let source = null, paused = false, held = [];
  const shown = [];
  const subject = el('input', { type: 'text', id: 'tail-subject', value: localStorage.getItem('magistral.console.tail') || '' });
  const filter = el('input', { type: 'search', id: 'tail-filter' });
  const status = el('p', { id: 'tail-status', 'aria-live': 'polite', text: t('tail.stopped') });
  const startBtn = el('button', { type: 'submit', id: 'tail-start', text: t('tail.start') });
  const pauseBtn = el('button', { type: 'button', id: 'tail-pause', 'aria-pressed': 'false', text: t('tail.pause'), disabled: true });
  const rows = el('tbody', {});
  const render = () => {
    const f = filter.value.trim().toLowerCase();
    fill(rows, shown.filter((m) => !f || JSON.stringify(m).toLowerCase().includes(f)).map((m) => el('tr', {},
      el('td', { text: fmtTime(m.time || m.received) }), el('td', { text: m.subject }), el('td', { class: 'mono', text: m.id || t('none') }),
      el('td', { text: m.type || t('none') }), el('td', { text: m.source || t('none') }), el('td', { class: 'num', text: fmtBytes(m.size) }),
      el('td', { class: 'detail mono', text: m.excerpt.length > 200 ? m.excerpt.slice(0, 200) + '…' : m.excerpt }))));
  };
  const stop = () => {
    if (source) source.close();
    source = null;
    startBtn.textContent = t('tail.start');
    pauseBtn.disabled = true;
    status.textContent = t('tail.stopped');
  };
  pageCleanup = stop;
  const form = el('form', { id: 'tail', class: 'card', onsubmit: (ev) => {
    ev.preventDefault();
    if (source) { stop(); return; }
    const s = subject.value.trim();
    if (!s) return;
    localStorage.setItem('magistral.console.tail', s);
    source = new EventSource('/v1/tail?subject=' + encodeURIComponent(s));
    startBtn.textContent = t('tail.stop');
    pauseBtn.disabled = false;
    status.textContent = t('tail.running', s) + ' · ' + t('tail.waiting');
    source.addEventListener('message', (ev) => {
      const m = JSON.parse(ev.data);
      m.received = new Date().toISOString();
      if (paused) { held.push(m); if (held.length > 500) held.shift(); status.textContent = t('tail.buffered', held.length); return; }
      shown.unshift(m);
      if (shown.length > 200) shown.pop();
      status.textContent = t('tail.running', s);
      render();
    });
    source.onerror = () => { if (source && source.readyState === EventSource.CLOSED) { stop(); toast(t('err.network'), true); } };
  } },
  el('label', { for: 'tail-subject', text: t('tail.subject') }), subject, startBtn, pauseBtn,
  el('label', { for: 'tail-filter', text: t('tail.filter') }), filter);
  pauseBtn.addEventListener('click', () => {
    paused = !paused;
    pauseBtn.setAttribute('aria-pressed', String(paused));
    pauseBtn.textContent = paused ? t('tail.resume') : t('tail.pause');
    if (!paused) {
      while (held.length) { shown.unshift(held.shift()); }
      shown.splice(200);
      render();
    }
  });
  filter.addEventListener('input', render);
  subject.addEventListener('input', () => { subject.dataset.touched = 'yes'; });
  main.append(el('h1', { text: t('tail.title') }), form, status,
    el('div', { class: 'scroll' }, el('table', { id: 'tail-table' },
      el('thead', {}, el('tr', {}, ['col.time', 'col.subject', 'col.id', 'col.type', 'col.source', 'col.size', 'col.body'].map((h) => el('th', { scope: 'col', text: t(h) })))),
      rows)));
  if (!subject.value) {
    api('GET', '/v1/overview').then((o) => {
      const first = o.streams.find((s) => !s.directory && s.subjects && s.subjects.length && !s.subjects[0].startsWith('magistral.'));
      // A suggestion only: never over what the operator is typing.
      if (first && !subject.value && !subject.dataset.touched) subject.value = first.subjects[0];
    }).catch(() => {});
  }
}

// --- contracts and directories -------------------------------------------------------------

function contractsPage(main) {
  const contracts = el('div', { class: 'scroll' });
  const schema = el('pre', { id: 'schema', class: 'code', tabindex: '0', hidden: true });
  const dirs = el('div', {});
  const keys = el('div', { id: 'keys' });
  main.append(el('h1', { text: t('nav.contracts') }),
    section('contracts', 'ct.title', contracts, schema), section('directories', 'ct.dirs', dirs, keys));
  (async () => {
    try {
      const index = await api('GET', '/v1/contracts');
      const rows = [];
      for (const c of index.contracts) {
        const subjects = c.subjects.map((s) => s.subject).concat(c.replies.map((r) => r.subject + ' (reply)'));
        const pubs = [...new Set(c.subjects.flatMap((s) => s.publishers || []).concat(c.replies.flatMap((r) => r.responders || [])))];
        const recv = [...new Set(c.subjects.flatMap((s) => s.receivers || []).concat(c.replies.flatMap((r) => r.requesters || [])))];
        rows.push(el('tr', {},
          el('th', { scope: 'row', text: c.name }),
          el('td', {}, c.versions.map((v) => el('button', { type: 'button', class: 'link', 'aria-label': t('ct.schema', c.name, v.version), text: 'v' + v.version, onclick: async () => {
            try {
              const r = await fetch(v.schema, { credentials: 'same-origin' });
              schema.textContent = JSON.stringify(await r.json(), null, 2);
              schema.hidden = false;
              schema.focus();
            } catch (e) { toast(errorText(e), true); }
          } }))),
          el('td', { text: list(subjects) }), el('td', { text: list(pubs) }), el('td', { text: list(recv) })));
      }
      fill(contracts, rows.length ? table('contracts-table', t('ct.title'), ['col.name', 'col.version', 'col.subjects', 'col.publishers', 'col.receivers'], rows) : el('p', { text: t('ct.none') }));
      const overview = await api('GET', '/v1/overview');
      fill(dirs, overview.directories.length ? el('ul', {}, overview.directories.map((d) => el('li', {},
        el('button', { type: 'button', class: 'link', 'aria-label': t('ct.showKeys', d.name), text: d.name, onclick: () => showKeys(d.name) }),
        ` · ${t('col.owner')}: ${d.owner}`, d.description ? ` · ${d.description}` : ''))) : el('p', { text: t('ct.none') }));
    } catch (e) { toast(errorText(e), true); }
  })();

  async function showKeys(bucket) {
    try {
      const r = await api('GET', '/v1/kv/' + encodeURIComponent(bucket));
      const value = el('pre', { class: 'code', tabindex: '0', hidden: true });
      const names = r.keys || [];
      fill(keys, el('h3', { text: t('ct.keys', bucket) }),
        names.length ? el('ul', { class: 'keys' }, names.map((k) => el('li', {}, el('button', { type: 'button', class: 'link', 'aria-label': t('ct.value', k), text: k, onclick: async () => {
          try {
            const v = await api('GET', '/v1/kv/' + encodeURIComponent(bucket) + '/' + encodeURIComponent(k));
            value.textContent = JSON.stringify(v, null, 2);
            value.hidden = false;
          } catch (e) { toast(errorText(e), true); }
        } })))) : el('p', { text: t('ct.none') }), value);
    } catch (e) { toast(errorText(e), true); }
  }
}

// --- start ---------------------------------------------------------------------------------

document.addEventListener('DOMContentLoaded', async () => {
  document.getElementById('lang').addEventListener('change', (ev) => {
    lang = ev.target.value;
    localStorage.setItem(LANG_KEY, lang);
    applyStaticText();
    if (session) route(); else showSignIn();
  });
  document.getElementById('signout').addEventListener('click', async () => {
    try { await api('DELETE', '/console/session'); } catch (e) { /* the cookie is gone either way */ }
    session = null;
    showSignIn();
  });
  window.addEventListener('hashchange', () => { if (session) route(); });
  applyStaticText();
  try {
    session = await api('GET', '/console/session');
    start();
  } catch (e) {
    showSignIn();
  }
});
