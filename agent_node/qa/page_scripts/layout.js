// Evaluated once a page has settled: horizontal overflow and the elements where it starts, text
// too small to read, images that did not load. Called with [maxOffenders, maxExamples, minFontPx].
([maxOffenders, maxExamples, minFontPx]) => {
  const root = document.scrollingElement || document.documentElement;
  const vw = document.documentElement.clientWidth;
  const scale = (window.visualViewport && window.visualViewport.scale) || 1;
  const selectorOf = (el) => {
    const parts = [];
    for (let e = el; e && e.nodeType === 1 && parts.length < 4; e = e.parentElement) {
      if (e.id) { parts.unshift('#' + CSS.escape(e.id)); break; }
      let part = e.tagName.toLowerCase();
      const cls = [...e.classList].slice(0, 2).map((c) => '.' + CSS.escape(c)).join('');
      part += cls;
      const parent = e.parentElement;
      if (parent) {
        const same = [...parent.children].filter((c) => c.tagName === e.tagName);
        if (same.length > 1) part += ':nth-of-type(' + (same.indexOf(e) + 1) + ')';
      }
      parts.unshift(part);
      if (e.tagName === 'BODY') break;
    }
    return parts.join(' > ');
  };
  const visible = (el, r) => {
    if (r.width <= 0 || r.height <= 0) return false;
    const s = getComputedStyle(el);
    return s.visibility !== 'hidden' && s.display !== 'none' && s.opacity !== '0';
  };
  // Clipped or scrollable inside an ancestor that stays in view: not page overflow.
  const clippedInside = (el) => {
    for (let a = el.parentElement; a && a !== document.body && a !== document.documentElement;
         a = a.parentElement) {
      const ox = getComputedStyle(a).overflowX;
      if (ox !== 'visible') return a.getBoundingClientRect().right <= vw + 1;
    }
    return false;
  };
  // Why an element runs past the edge, where the page says so plainly: it is an item of a flex
  // row that does not wrap (the fix is the row's, not the item's).
  const causeOf = (el) => {
    const p = el.parentElement;
    if (!p) return null;
    const ps = getComputedStyle(p);
    if ((ps.display === 'flex' || ps.display === 'inline-flex') && ps.flexWrap === 'nowrap'
        && !ps.flexDirection.startsWith('column')) {
      return { kind: 'flex-nowrap', selector: selectorOf(p) };
    }
    return null;
  };
  const all = [...document.body ? document.body.querySelectorAll('*') : []].slice(0, 5000);
  const crossing = new Set();
  const offenders = [];
  for (const el of all) {
    const r = el.getBoundingClientRect();
    if (r.right > vw + 1 && visible(el, r) && !clippedInside(el)) crossing.add(el);
  }
  for (const el of crossing) {
    if (crossing.has(el.parentElement)) continue;  // report where the overflow starts
    const r = el.getBoundingClientRect();
    offenders.push({ selector: selectorOf(el), left: Math.round(r.left), top: Math.round(r.top),
      width: Math.round(r.width), height: Math.round(r.height),
      overshoot: Math.round(r.right - vw), cause: causeOf(el) });
  }
  offenders.sort((a, b) => b.overshoot - a.overshoot);
  const small = [];
  let smallCount = 0;
  for (const el of all) {
    const own = [...el.childNodes].some((n) => n.nodeType === 3 && n.textContent.trim());
    if (!own) continue;
    const r = el.getBoundingClientRect();
    if (!visible(el, r)) continue;
    const px = parseFloat(getComputedStyle(el).fontSize) * scale;
    if (px < minFontPx) {
      smallCount += 1;
      if (small.length < maxExamples) small.push({ selector: selectorOf(el),
        px: Math.round(px * 10) / 10, text: el.textContent.trim().slice(0, 60) });
    }
  }
  const broken = [...document.images]
    .filter((img) => img.complete && img.naturalWidth === 0 && (img.currentSrc || img.src))
    .slice(0, maxExamples)
    .map((img) => ({ selector: selectorOf(img), src: img.currentSrc || img.src }));
  return {
    viewport_width: vw, document_width: root.scrollWidth, scale: Math.round(scale * 1000) / 1000,
    viewport_meta: !!document.querySelector('meta[name="viewport"]'),
    offenders: offenders.slice(0, maxOffenders), offender_count: offenders.length,
    small_text: { count: smallCount, examples: small }, broken_images: broken,
  };
}
