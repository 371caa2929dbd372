// The error explorer widget (anywidget ESM): map + region list + region panel + fine-tuning.
// State lives in the Python model's traits; actions go to Python as custom messages and are
// acknowledged, so the UI never waits forever on a kernel that is gone.
import { Arr, decode, encode, Wire } from "./common/codec";
import { ErrorMap, MapData } from "./explorer/map";
import { RegionInfo, RegionList, RegionPanel } from "./explorer/regions";
import { FineTune, Params, Progress, Round } from "./explorer/finetune";
import { AuditView } from "./explorer/audit";
import { CSS } from "./explorer/style";
import { Host, InterpPanel } from "./explorer/interp";

type Model = {
  get(name: string): any;
  set(name: string, value: any): void;
  save_changes(): void;
  on(name: string, cb: (...args: any[]) => void): void;
  off(name?: string | null, cb?: ((...args: any[]) => void) | null): void;
  send(content: any, callbacks?: any, buffers?: ArrayBuffer[] | ArrayBufferView[]): void;
};

const ACK_TIMEOUT_MS = 20000;

function render({ model, el, host }: { model: Model; el: HTMLElement; host?: Host }) {
  const t0 = performance.now();
  const style = document.createElement("style");
  style.textContent = CSS;
  const root = document.createElement("div");
  root.className = "dfx";
  const status = document.createElement("div");
  status.className = "dfx-status";
  status.setAttribute("role", "status");
  status.setAttribute("aria-live", "polite");
  const left = document.createElement("div");
  const right = document.createElement("div");
  root.append(status, left, right);
  el.append(style, root);

  let localError = "";
  let localNote = "";
  const showStatus = () => {
    const busy: string = model.get("busy") || "";
    const err: string = localError || model.get("error") || "";
    status.innerHTML = "";
    if (busy) {
      const s = document.createElement("span");
      s.className = "dfx-spin";
      s.setAttribute("aria-hidden", "true");
      status.append(s);
    }
    const msg = document.createElement("span");
    msg.textContent = localNote || model.get("status") || "";
    status.append(msg);
    if (err) {
      const e = document.createElement("span");
      e.className = "dfx-err";
      e.setAttribute("role", "alert");
      e.textContent = ` ${err}`;
      status.append(e);
    }
  };

  // --- actions with acknowledgements ---------------------------------------------------------
  let nextId = 1;
  const pending = new Map<number, number>();
  const act = (content: Record<string, unknown>, note = "") => {
    const id = nextId++;
    localError = "";
    localNote = note;
    showStatus();
    pending.set(id, window.setTimeout(() => {
      pending.delete(id);
      localNote = "";
      localError = "No answer from the kernel: it may have been restarted or be busy. Re-run the cell that shows the explorer.";
      showStatus();
    }, ACK_TIMEOUT_MS));
    model.send({ ...content, id });
  };

  // --- thumbnails: one sprite buffer, or one point at a time on demand (newest wins) ---------
  let thumbs: Arr | null = null;
  let thumbWaiting: { index: number; resolve: (a: Arr | null) => void } | null = null;
  let thumbInFlight = false;
  const thumbCache = new Map<number, Arr>();
  const requestThumb = () => {
    if (thumbInFlight || !thumbWaiting) return;
    thumbInFlight = true;
    model.send({ kind: "thumb", index: thumbWaiting.index });
  };
  const thumb = (index: number): Promise<Arr | null> => {
    if (thumbs) return Promise.resolve(thumbs);
    const hit = thumbCache.get(index);
    if (hit) return Promise.resolve(hit);
    return new Promise((resolve) => {
      thumbWaiting?.resolve(null);
      thumbWaiting = { index, resolve };
      requestThumb();
    });
  };

  const onMsg = (msg: any, buffers: DataView[]) => {
    if (!msg) return;
    if (msg.kind === "ack") {
      const timer = pending.get(msg.id);
      if (timer !== undefined) { clearTimeout(timer); pending.delete(msg.id); }
      localNote = "";
      localError = msg.ok ? "" : String(msg.message || "failed");
      showStatus();
    } else if (msg.kind === "thumb") {
      thumbInFlight = false;
      const arr = buffers && buffers[0] ? decode({ buffer: buffers[0], dtype: "uint8", shape: msg.shape }) : null;
      if (arr) thumbCache.set(msg.index, arr);
      if (thumbWaiting && thumbWaiting.index === msg.index) { thumbWaiting.resolve(arr); thumbWaiting = null; }
      requestThumb();
    }
  };
  model.on("msg:custom", onMsg);

  // --- map, list, panel, fine-tune -------------------------------------------------------------
  const classes = (): string[] => model.get("classes") || [];
  const regions = (): RegionInfo[] => model.get("regions") || [];
  const labels = (): Record<string, number> => model.get("labels") || {};
  let selfSelection: any = null; // echo guard: the value we wrote ourselves

  const selectRegion = (rid: number) => {
    model.set("selected_region", rid);
    model.save_changes();
    map.setSelectedRegion(rid);
    list.render(regions(), labels(), rid, classes());
  };

  const map = new ErrorMap(left, {
    onClickPoint: (i) => {
      model.set("selected_error", i); // the kernel opens/retargets the interpolation panel
      model.save_changes();
      interp.set(model.get("interpolator"), i);
      const r = mapData?.region.data[i];
      if (r !== undefined && r >= 0) selectRegion(r);
      else { localNote = `Point ${i} is in no region.`; showStatus(); }
    },
    onSelect: (idx) => {
      const arr = idx ?? new Int32Array(0);
      selfSelection = encode(arr);
      model.set("selected_indices", selfSelection);
      model.save_changes();
      panel.setSelectionCount(arr.length);
    },
    thumb,
  });
  const list = new RegionList(right, selectRegion);
  const panel = new RegionPanel(root, {
    label: (rid, label) => act({ kind: "label", region: rid, label }, `Labeling region ${rid}…`),
    unlabel: (rid) => act({ kind: "unlabel", region: rid }, `Clearing the label of region ${rid}…`),
    addRegion: () => act({ kind: "add_region" }, "Making a region from the selection…"),
  });
  let selfAuditSelection: any = null; // echo guard, as for selected_indices
  const audit = new AuditView(panel.root, {
    open: (rid) => act({ kind: "audit", region: rid }, `Auditing the training images of region ${rid}…`),
    select: (idx) => {
      selfAuditSelection = encode(idx);
      model.set("audit_selection", selfAuditSelection);
      model.save_changes();
    },
    relabel: (idx) => act({ kind: "relabel", indices: idx }, "Relabeling…"),
    undo: (idx) => act({ kind: "unrelabel", indices: idx }, "Undoing relabels…"),
  });
  const interp = new InterpPanel(root, host, (msg) => { localError = msg; showStatus(); });
  const tune = new FineTune(root, {
    start: (p) => act({ kind: "finetune", ...p }, "Starting fine-tuning…"),
    cancel: () => act({ kind: "cancel" }, "Cancelling…"),
    revert: () => act({ kind: "revert" }, "Reverting the model…"),
    params: (p) => { model.set("finetune_params", p); model.save_changes(); },
  });

  let mapData: MapData | null = null;
  const buildMapData = (): MapData | null => {
    const xy = decode(model.get("points") as Wire);
    const region = decode(model.get("point_region") as Wire);
    if (!xy || !region) return null;
    const colors = new Map<number, string>();
    for (const r of regions()) colors.set(r.id, r.color);
    return { xy, region, labels: decode(model.get("point_labels")), confidence: decode(model.get("point_confidence")),
      fixed: decode(model.get("point_fixed")), background: decode(model.get("background_points")),
      backgroundLabel: model.get("background_label") || "", colors, classes: classes() };
  };
  const drawMap = async (full: boolean) => {
    const start = performance.now();
    const d = buildMapData();
    if (!d) return;
    mapData = d;
    map.selectedRegion = model.get("selected_region");
    try {
      if (full) await map.render(d); else await map.recolor(d);
      map.root.dataset.drawMs = String(Math.round(performance.now() - start));
      map.root.dataset.renderMs = String(Math.round(performance.now() - t0));
    } catch (e) {
      localError = `Could not draw the map: ${e}`;
      showStatus();
    }
  };

  const onThumbs = () => { thumbs = decode(model.get("thumbs")); thumbCache.clear(); };
  const onAuditRegion = () => {
    const rid = panel.region;
    audit.setRegion(rid, rid >= 0 ? labels()[String(rid)] : undefined, classes());
  };
  const onRegions = () => {
    list.render(regions(), labels(), model.get("selected_region"), classes());
    panel.render(model.get("panel"), regions(), labels(), classes());
    onAuditRegion();
  };
  const onPanel = () => { panel.render(model.get("panel"), regions(), labels(), classes()); onAuditRegion(); };
  const onAudit = () => {
    onAuditRegion();
    audit.setData(model.get("audit"), decode(model.get("audit_labels")));
    onAuditSelection();
  };
  const onAuditLabels = () => audit.setLabels(decode(model.get("audit_labels")));
  const onAuditSelection = () => {
    const v = model.get("audit_selection");
    if (v === selfAuditSelection) return;
    const a = decode(v);
    audit.setSelected(a ? new Int32Array(a.data) : new Int32Array(0));
  };
  const onRelabels = () => { const n = model.get("relabel_count") || 0; audit.setCount(n); tune.setRelabels(n); };
  const onSelectedRegion = () => {
    const rid = model.get("selected_region");
    map.setSelectedRegion(rid);
    list.render(regions(), labels(), rid, classes());
  };
  const onSelection = () => {
    const v = model.get("selected_indices");
    if (v === selfSelection) return; // our own write coming back
    const a = decode(v);
    const idx = a ? new Int32Array(a.data) : new Int32Array(0);
    map.setSelection(idx);
    panel.setSelectionCount(idx.length);
  };
  const onProgress = () => tune.setProgress(model.get("progress") as Progress);
  const onHistory = () => tune.setHistory(model.get("history") as Round[], model.get("baseline") as Round | null);
  const onParams = () => tune.setParams(model.get("finetune_params") as Params);
  const onClasses = () => panel.setClasses(classes());
  const onInterp = () => interp.set(model.get("interpolator"), model.get("selected_error"));
  const onPoints = () => drawMap(true);
  const onColors = () => drawMap(false);

  const handlers: [string, () => void][] = [
    ["change:status", showStatus], ["change:error", showStatus], ["change:busy", showStatus],
    ["change:points", onPoints], ["change:background_points", onPoints], ["change:point_region", onColors], ["change:point_fixed", onColors],
    ["change:regions", () => { onRegions(); onColors(); }], ["change:labels", onRegions],
    ["change:thumbs", onThumbs], ["change:panel", onPanel], ["change:selected_region", onSelectedRegion],
    ["change:selected_indices", onSelection], ["change:progress", onProgress], ["change:history", onHistory],
    ["change:baseline", onHistory], ["change:finetune_params", onParams], ["change:classes", onClasses],
    ["change:audit", onAudit], ["change:audit_labels", onAuditLabels], ["change:audit_selection", onAuditSelection],
    ["change:relabel_count", onRelabels], ["change:interpolator", onInterp], ["change:selected_error", onInterp],
  ];
  for (const [ev, cb] of handlers) model.on(ev, cb);

  // initial state (a re-display shows the current state)
  onClasses(); onThumbs(); showStatus(); onParams(); onProgress(); onRegions(); onAudit(); onRelabels(); onInterp();
  panel.setSelectionCount(decode(model.get("selected_indices"))?.data.length ?? 0);
  drawMap(true).then(onSelection).then(onHistory); // the map first, then the small chart
  model.send({ kind: "hello" }); // Python counts the views shown (and catches up on what it deferred)

  return () => {
    try { model.send({ kind: "bye" }); } catch { /* the model is already closed */ }
    for (const [ev, cb] of handlers) model.off(ev, cb);
    model.off("msg:custom", onMsg);
    for (const t of pending.values()) clearTimeout(t);
    map.destroy();
    tune.destroy();
    interp.destroy();
  };
}

export default { render };
