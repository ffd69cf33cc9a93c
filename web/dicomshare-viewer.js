// dicomshare's data-source shim for OHIF, loaded before OHIF's bundle.
//
// The share page redeems the link once and leaves in this tab's sessionStorage what the
// viewer needs: the API's address, the token, the PIN if any, and the redeemed share's
// studies and series. OHIF's dicomjson data source fetches its document from
// /dicomshare/share.json (a same-origin address that exists only here): this script
// answers that fetch with the document it builds from the share API's pages
// (GET share/dicomjson, which count no redemption), the shared study first, then the
// priors. The token never appears in an address, only in request headers.
//
// Presigned URLs expire (presign_seconds); shortly before, the pages are read again and
// every later request for an instance (XMLHttpRequest or fetch) goes to its newest URL.
(() => {
  "use strict";
  const DOCUMENT_PATH = "/dicomshare/share.json";
  const REFRESH_MARGIN_MS = 120000;
  const session = JSON.parse(sessionStorage.getItem("dicomshare-viewer") || "null");
  const nativeFetch = window.fetch.bind(window);
  const newest = new Map();  // presigned URL without its query -> newest presigned URL

  function objectKey(url) {
    return url.replace(/^dicomweb:/, "").split("?")[0];
  }

  function current(url) {
    if (typeof url !== "string") return url;
    const prefix = url.startsWith("dicomweb:") ? "dicomweb:" : "";
    const latest = newest.get(objectKey(url));
    if (!latest) return url;
    const frame = /[?&]frame=\d+$/.exec(url);
    return prefix + latest + (frame ? frame[0] : "");
  }

  async function* pages(study, series) {
    let next = null;
    do {
      const query = new URLSearchParams({ study_uid: study.study_uid, series_uid: series.series_uid });
      if (next) query.set("next", next);
      const headers = { "Authorization": "Share " + session.token, "Accept": "application/json" };
      if (session.pin) headers["X-Share-Pin"] = session.pin;
      const response = await nativeFetch(session.api + "share/dicomjson?" + query,
        { headers, cache: "no-store", referrerPolicy: "no-referrer" });
      if (!response.ok) throw new Error("share/dicomjson answered " + response.status);
      const page = await response.json();
      yield page;
      next = page.next;
    } while (next);
  }

  // The whole share as one dicomjson document; remembers every instance's newest URL.
  async function shareDocument() {
    const studies = [];
    let expiresAt = Infinity;
    for (const study of session.studies) {
      let merged = null;
      for (const series of study.series) {
        let target = null;
        for await (const page of pages(study, series)) {
          expiresAt = Math.min(expiresAt, Date.parse(page.urls_expire_at));
          const [pageStudy] = page.studies;
          const [pageSeries] = pageStudy.series;
          if (!merged) { merged = { ...pageStudy, series: [] }; studies.push(merged); }
          if (!target) { target = { ...pageSeries, instances: [] }; merged.series.push(target); }
          for (const instance of pageSeries.instances) {
            target.instances.push(instance);
            const url = instance.url.replace(/^dicomweb:/, "").replace(/&frame=\d+$/, "");
            newest.set(objectKey(url), url);
          }
        }
      }
      if (merged) {
        merged.Modalities = [...new Set(merged.series.map((s) => s.Modality).filter(Boolean))].join("\\");
      }
    }
    if (expiresAt < Infinity) {
      setTimeout(() => shareDocument().catch(() => {}), Math.max(10000, expiresAt - Date.now() - REFRESH_MARGIN_MS));
    }
    return { studies };
  }

  window.fetch = (input, init) => {
    const url = typeof input === "string" ? input : input instanceof Request ? input.url : String(input);
    if (new URL(url, location.href).pathname === DOCUMENT_PATH) {
      if (!session) {
        return Promise.resolve(new Response(JSON.stringify({ studies: [] }), { status: 404 }));
      }
      return shareDocument().then((document) => new Response(JSON.stringify(document),
        { headers: { "Content-Type": "application/json" } }));
    }
    return nativeFetch(typeof input === "string" ? current(input) : input, init);
  };

  // On a phone the study list would take the whole width: it starts closed (the button
  // beside "Studies" opens it again).
  if (matchMedia("(max-width: 700px)").matches) {
    const observer = new MutationObserver(() => {
      const close = document.querySelector('[data-cy="side-panel-header-left"]');
      if (close) { observer.disconnect(); close.click(); }
    });
    observer.observe(document.documentElement, { childList: true, subtree: true });
  }

  const open = XMLHttpRequest.prototype.open;
  XMLHttpRequest.prototype.open = function (method, url, ...rest) {
    return open.call(this, method, current(String(url)), ...rest);
  };
})();
