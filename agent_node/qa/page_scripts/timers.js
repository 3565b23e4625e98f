// Added to every page before its own scripts: tracks the page's own short setTimeouts (up to
// TIMER_WINDOW_MS, filled in by capture.py) so the settle wait can end as soon as they have run.
(() => {
  const LIMIT = TIMER_WINDOW_MS, pending = new Set();
  const setT = window.setTimeout.bind(window), clearT = window.clearTimeout.bind(window);
  window.setTimeout = function (fn, delay, ...args) {
    if (typeof fn !== 'function' || (Number(delay) || 0) > LIMIT) return setT(fn, delay, ...args);
    const id = setT(function () { pending.delete(id); return fn.apply(window, args); }, delay);
    pending.add(id);
    return id;
  };
  window.clearTimeout = function (id) { pending.delete(id); return clearT(id); };
  Object.defineProperty(window, '__studioCoderPendingTimers', { value: () => pending.size });
})();
