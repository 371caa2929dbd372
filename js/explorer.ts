// The error explorer widget (anywidget ESM): map + region list + region panel + fine-tuning.
// State lives in the Python model's traits; actions and on-demand thumbnails are anywidget
// commands (`experimental.invoke`), answered by the kernel or given up after a timeout. Styles
// come from the widget's `_css`. Each model counts its views in this page and tells the kernel
// through `_has_visible_views` whether one is shown (as jupyter_rfb does).
import type { AnyModel, Host, RenderProps } from "@anywidget/types";
import { decode, encode, Wire } from "./common/codec";
import { freeze, LOST_MESSAGE, watchKernel } from "./common/kernel";
import { MapData } from "./explorer/map_data";
import { createMap } from "./explorer/map_create";
import { RegionInfo, RegionList, RegionPanel } from "./explorer/regions";
import { FineTune, Params, Progress, Round } from "./explorer/finetune";
import { AuditView } from "./explorer/audit";
import { InterpPanel } from "./explorer/interp";
import { Status } from "./explorer/status";
import { GeneratorView } from "./explorer/generator";
import { SuiteExport } from "./explorer/suite";
import { Tabs } from "./explorer/tabs";
import { Thumbs } from "./explorer/thumbs";

type View = { cleanup: () => void; lost: () => boolean };

function render({ model, el, host, signal, experimental }: RenderProps): View {
  const t0 = performance.now();
  // layout (explorer.css): a bounded-height grid, map | region list | region panel with tabs,
  // fine-tuning under the map; a frame narrower than 900 px stacks them (a container query)
  const frame = document.createElement("div");
  frame.className = "dfx-frame";
  const root = document.createElement("div");
  root.className = "dfx";
  frame.append(root);
  el.append(frame);
  const top = document.createElement("div");
  top.className = "dfx-top";
  root.append(top);
  const status = new Status(top, model, experimental.invoke, signal);
  const showStatus = () => status.show();
  const sizeBtn = document.createElement("button");
  sizeBtn.type = "button";
  sizeBtn.textContent = "Presentation size";
  sizeBtn.setAttribute("aria-label", "Presentation size");
  sizeBtn.addEventListener("click", () => { model.set("presentation", !model.get("presentation")); model.save_changes(); });
  top.append(sizeBtn);
  const left = document.createElement("div");
  left.className = "dfx-mapcol";
  const middle = document.createElement("div");
  middle.className = "dfx-middle";
  const right = document.createElement("div");
  right.className = "dfx-detail";
  root.append(left, middle, right);
  const act = (name: string, msg: Record<string, unknown>, note: string) => void status.act(name, msg, note);
  const thumbs = new Thumbs(experimental.invoke, signal);

  // --- map, list, panel, fine-tune -------------------------------------------------------------
  const classes = (): string[] => model.get("classes") || [];
  const regions = (): RegionInfo[] => model.get("regions") || [];
  const labels = (): Record<string, number> => model.get("labels") || {};
  let selfSelection: any = null; // echo guard: the value we wrote ourselves

  // the map highlights a newly selected region once its panel is shown (or 400 ms later): on a
  // software-WebGL machine a frame of a million-point map blocks the page for a while
  let highlightTimer = 0;
  const highlight = () => { window.clearTimeout(highlightTimer); highlightTimer = 0; map.setSelectedRegion(model.get("selected_region")); };
  const highlightSoon = () => { window.clearTimeout(highlightTimer); highlightTimer = window.setTimeout(highlight, 400); };
  const sortBy = (): string => model.get("region_sort") || "size";
  const renderList = (rid: number) => list.render(regions(), labels(), rid, classes(), sortBy());
  const selectRegion = (rid: number) => {
    model.set("selected_region", rid);
    model.save_changes();
    highlightSoon();
    renderList(rid);
  };
  // the region under the pointer (or the list's keyboard focus) lit on the map, the others dimmed
  let hoverTimer = 0;
  const hoverRegion = (rid: number | null) => {
    window.clearTimeout(hoverTimer);
    hoverTimer = window.setTimeout(() => {
      const shown = rid ?? model.get("selected_region");
      map.root.dataset.hoveredRegion = String(rid ?? -1);
      if (map.selectedRegion !== shown) void map.setSelectedRegion(shown);
    }, 60);
  };

  const map = createMap(left, {
    onClickPoint: (i) => {
      model.set("selected_error", i); // the kernel opens/retargets the interpolation panel
      model.save_changes();
      tabs.show("error");
      interp.set(model.get("interpolator"), i);
      interp.reveal();
      const r = mapData?.region.data[i];
      if (r !== undefined && r >= 0) selectRegion(r);
      else status.note(`Point ${i} is in no region.`);
    },
    onSelect: (idx) => {
      const arr = idx ?? new Int32Array(0);
      selfSelection = encode(arr);
      model.set("selected_indices", selfSelection);
      model.save_changes();
      panel.setSelectionCount(arr.length);
    },
    thumb: (i) => thumbs.get(i),
  }, model.get("map_engine") || "regl");
  const labelRegion = (rid: number, label: number) => act("_label_command", { region: rid, label }, `Labeling region ${rid}…`);
  const unlabelRegion = (rid: number) => act("_unlabel_command", { region: rid }, `Clearing the label of region ${rid}…`);
  const list = new RegionList(middle, {
    pick: selectRegion, label: labelRegion, unlabel: unlabelRegion, hover: hoverRegion,
    sort: (by) => { model.set("region_sort", by); model.save_changes(); renderList(model.get("selected_region")); },
  });
  const panelHost = document.createElement("div");
  panelHost.className = "dfx-panel-host";
  right.append(panelHost);
  const tabs = new Tabs(right, [["members", "Members"], ["audit", "Audit"], ["error", "Error"],
    ["rounds", "Rounds"], ["tests", "Export"], ["generator", "Generator"]], "Region details", (key) => { if (key === "rounds") void tune.drawChart(); });
  const panel = new RegionPanel(panelHost, {
    label: labelRegion, unlabel: unlabelRegion,
    addRegion: () => act("_add_region_command", {}, "Making a region from the selection…"),
  }, tabs.panel("members"));
  let selfAuditSelection: any = null; // echo guard, as for selected_indices
  const audit = new AuditView(tabs.panel("audit"), {
    open: (rid) => act("_audit_command", { region: rid }, `Auditing the training images of region ${rid}…`),
    select: (idx) => {
      selfAuditSelection = encode(idx);
      model.set("audit_selection", selfAuditSelection);
      model.save_changes();
    },
    relabel: (idx) => act("_relabel_command", { indices: idx }, "Relabeling…"),
    undo: (idx) => act("_unrelabel_command", { indices: idx }, "Undoing relabels…"),
  });
  const interpHint = document.createElement("p");
  interpHint.className = "dfx-hint";
  interpHint.textContent = "Click a point on the map (or press Enter on it) to interpolate from its source image.";
  tabs.panel("error").append(interpHint);
  const interp = new InterpPanel(tabs.panel("error"), host as Host | undefined, (msg) => status.fail(msg));
  const tune = new FineTune(root, {
    start: (p) => act("_fine_tune_command", { ...p }, "Starting fine-tuning…"),
    cancel: () => act("_cancel_command", {}, "Cancelling…"),
    revert: (round?: number) => act("_revert_command", round == null ? {} : { round },
      round == null ? "Reverting the model…" : `Reverting to round ${round}…`),
    params: (p) => { model.set("finetune_params", p); model.save_changes(); },
  }, tabs.panel("rounds"));
  const suite = new SuiteExport(tabs.panel("tests"), {
    exportTests: (path) => act("_export_tests_command", { path }, `Exporting the labeled regions to ${path}…`),
  });

  const generator = new GeneratorView(tabs.panel("generator"),
    () => act("_generator_command", {}, "Measuring the generator…"));

  let mapData: MapData | null = null;
  const buildMapData = (): MapData | null => {
    const xy = decode(model.get("points") as Wire);
    const region = decode(model.get("point_region") as Wire);
    // a live search grows the map: draw only when every point array has the same length
    if (!xy || !region || xy.data.length !== 2 * region.data.length) return null;
    const colors = new Map<number, string>();
    for (const r of regions()) colors.set(r.id, r.color);
    return { xy, region, labels: decode(model.get("point_labels")), confidence: decode(model.get("point_confidence")),
      validity: decode(model.get("point_validity")),
      fixed: decode(model.get("point_fixed")), background: decode(model.get("background_points")),
      backgroundLabel: model.get("background_label") || "", colors, classes: classes(),
      layout: model.get("map_layout") || "" };
  };
  const drawMap = async (full: boolean) => {
    const start = performance.now();
    const d = buildMapData();
    if (!d) return;
    if (mapData && mapData.xy.data.length !== d.xy.data.length) full = true; // new points
    mapData = d;
    map.selectedRegion = model.get("selected_region");
    try {
      if (full) await map.render(d); else await map.recolor(d);
      map.root.dataset.drawMs = String(Math.round(performance.now() - start));
      map.root.dataset.renderMs = String(Math.round(performance.now() - t0));
    } catch (e) {
      status.fail(`Could not draw the map: ${e}`);
    }
  };

  const onThumbs = () => thumbs.setSprite(decode(model.get("thumbs")));
  const onAuditRegion = () => {
    const rid = panel.region;
    audit.setRegion(rid, rid >= 0 ? labels()[String(rid)] : undefined, classes());
  };
  const onRegions = () => {
    suite.setLabeled(Object.values(labels()).filter((v) => v >= 0).length);
    list.setSorts(model.get("region_sorts") || ["size"], sortBy());
    renderList(model.get("selected_region"));
    panel.render(model.get("panel"), regions(), labels(), classes());
    onAuditRegion();
  };
  const onPanel = () => {
    panel.render(model.get("panel"), regions(), labels(), classes());
    onAuditRegion();
    if (highlightTimer) requestAnimationFrame(highlight); // after the panel is painted
  };
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
    highlightSoon();
    renderList(model.get("selected_region"));
  };
  const showSelection = () => {
    const a = decode(model.get("selected_indices"));
    const idx = a ? new Int32Array(a.data) : new Int32Array(0);
    map.setSelection(idx);
    panel.setSelectionCount(idx.length);
  };
  const onSelection = () => {
    if (model.get("selected_indices") === selfSelection) return; // our own write coming back
    showSelection();
  };
  const onProgress = () => tune.setProgress(model.get("progress") as Progress);
  const onHistory = () => tune.setHistory(model.get("history") as Round[], model.get("baseline") as Round | null);
  const onParams = () => tune.setParams(model.get("finetune_params") as Params);
  const onClasses = () => panel.setClasses(classes());
  const onInterp = () => {
    const i = model.get("selected_error"), ref = model.get("interpolator");
    interpHint.hidden = !!ref && i >= 0;
    interp.set(ref, i);
  };
  const onSelectedError = () => { if (model.get("selected_error") >= 0) tabs.show("error"); onInterp(); };
  const onSize = () => {
    root.style.setProperty("--dfx-height", `${Math.max(400, Number(model.get("height")) || 700)}px`);
    const big = !!model.get("presentation");
    root.dataset.size = big ? "presentation" : "normal";
    sizeBtn.setAttribute("aria-pressed", String(big));
  };
  const onPoints = () => drawMap(true).then(showSelection); // a new layout keeps the selection
  const onColors = () => drawMap(false);
  // which regions a live search shows ("quick", then "full"; the status line says it in words)
  const onRegionsFit = () => { map.root.dataset.regionsFit = model.get("regions_fit") || ""; };

  const handlers: [string, () => void][] = [
    ["change:status", showStatus], ["change:error", showStatus], ["change:busy", showStatus],
    ["change:points", onPoints], ["change:background_points", onPoints],
    ["change:background_label", () => map.setBackgroundLabel(model.get("background_label") || "")], ["change:point_region", onColors], ["change:point_fixed", onColors],
    ["change:regions", () => { onRegions(); onColors(); }], ["change:labels", onRegions],
    ["change:thumbs", onThumbs], ["change:panel", onPanel], ["change:selected_region", onSelectedRegion],
    ["change:selected_indices", onSelection], ["change:progress", onProgress], ["change:history", onHistory],
    ["change:baseline", onHistory], ["change:finetune_params", onParams], ["change:classes", onClasses],
    ["change:audit", onAudit], ["change:audit_labels", onAuditLabels], ["change:audit_selection", onAuditSelection],
    ["change:relabel_count", onRelabels], ["change:interpolator", onInterp], ["change:selected_error", onSelectedError],
    ["change:generator", () => generator.set(model.get("generator"))], ["change:regions_fit", onRegionsFit],
    ["change:height", onSize], ["change:presentation", onSize], ["change:region_sort", onRegions], ["change:region_sorts", onRegions],
  ];
  for (const [ev, cb] of handlers) model.on(ev, cb);

  // initial state (a re-display shows the current state)
  generator.set(model.get("generator")); onSize(); onClasses(); onThumbs(); onRegionsFit(); showStatus(); onParams(); onProgress(); onRegions(); onAudit(); onRelabels(); onInterp();
  panel.setSelectionCount(decode(model.get("selected_indices"))?.data.length ?? 0);
  drawMap(true).then(onSelection).then(onHistory); // the map first, then the small chart

  const lost = watchKernel(model, signal, () => {
    status.lose(LOST_MESSAGE);
    freeze(root, status.root);
    map.root.removeAttribute("tabindex");
  });

  const cleanup = () => {
    for (const [ev, cb] of handlers) model.off(ev, cb);
    window.clearTimeout(hoverTimer);
    map.destroy();
    tune.destroy();
    interp.destroy();
  };
  return { cleanup, lost };
}

/** Tell the kernel whether a view of this model is shown (it defers work while none is). */
function reportViews(model: AnyModel, shown: number): void {
  try {
    model.set("_has_visible_views", shown > 0);
    model.save_changes();
  } catch { /* the model is already closed */ }
}

// One factory call per model: `shown` counts that model's views in this page.
export default () => {
  let shown = 0;
  return {
    render(props: RenderProps) {
      const view = render(props);
      reportViews(props.model, ++shown);
      return () => { view.cleanup(); --shown; if (!view.lost()) reportViews(props.model, shown); };
    },
  };
};
