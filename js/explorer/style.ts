export const CSS = `
.dfx { font: 13px/1.4 var(--jp-ui-font-family, system-ui, sans-serif); color: var(--jp-ui-font-color1, #222);
  display: grid; grid-template-columns: minmax(420px, 3fr) minmax(260px, 2fr); gap: 10px; max-width: 1200px; }
.dfx > * { min-width: 0; }
.dfx [hidden] { display: none !important; }
.dfx h3 { font-size: 13px; margin: 4px 0; }
.dfx-status { grid-column: 1 / span 2; min-height: 18px; color: var(--jp-ui-font-color2, #555); }
.dfx-status .dfx-err { color: #b00020; font-weight: 600; }
.dfx-spin { display: inline-block; width: 10px; height: 10px; border: 2px solid #999; border-top-color: transparent;
  border-radius: 50%; animation: dfxspin 0.8s linear infinite; margin-right: 6px; vertical-align: -1px; }
@keyframes dfxspin { to { transform: rotate(360deg); } }
.dfx-map { position: relative; height: 460px; border: 1px solid var(--jp-border-color2, #ddd); }
.dfx-map-plot { width: 100%; height: 100%; }
.dfx-map-note { position: absolute; left: 24px; bottom: 22px; font-size: 11px; color: #777; pointer-events: none; }
.dfx-tip { position: absolute; pointer-events: none; background: #fff; border: 1px solid #888; padding: 4px;
  font-size: 12px; z-index: 10; box-shadow: 0 1px 4px rgba(0,0,0,.3); display: none; }
.dfx-tip img { display: block; width: 64px; height: 64px; image-rendering: pixelated; }
.dfx-list { max-height: 460px; overflow-y: auto; border: 1px solid var(--jp-border-color2, #ddd); }
.dfx-list button { display: flex; width: 100%; align-items: center; gap: 6px; border: 0; border-bottom: 1px solid #eee;
  background: none; padding: 4px 6px; text-align: left; cursor: pointer; font: inherit; color: inherit; }
.dfx-list button[aria-pressed="true"] { background: var(--jp-brand-color3, #d6e9fb); }
.dfx-swatch { width: 12px; height: 12px; border-radius: 2px; flex: none; }
.dfx-list .dfx-lab { margin-left: auto; font-size: 11px; padding: 0 4px; border-radius: 3px; background: #eee; }
.dfx-panel, .dfx-tune, .dfx-interp { grid-column: 1 / span 2; border-top: 1px solid var(--jp-border-color2, #ddd); padding-top: 6px; }
.dfx-gallery { display: flex; flex-wrap: wrap; gap: 4px; }
.dfx-gallery figure { margin: 0; text-align: center; font-size: 11px; }
.dfx-gallery img { width: 56px; height: 56px; image-rendering: pixelated; display: block; border: 1px solid #ccc; }
.dfx-gallery figure.dfx-wrong img { border-color: #d33; }
.dfx-controls { display: flex; flex-wrap: wrap; gap: 6px; align-items: center; margin: 6px 0; }
.dfx-controls input { width: 70px; }
.dfx progress { width: 220px; }
.dfx-chart { width: 420px; height: 200px; }
.dfx-audit { margin-top: 8px; border-top: 1px dashed var(--jp-border-color2, #ddd); padding-top: 4px; }
.dfx-audit-info, .dfx-tune-relabels { margin: 4px 0; }
.dfx-audit figure label { display: flex; align-items: center; justify-content: center; gap: 2px; }
.dfx-audit figure.dfx-relabeled img { border-color: #2a9d3a; border-width: 2px; }
.dfx-relabels { font-weight: 600; }
.dfx-tune-row { display: flex; gap: 16px; flex-wrap: wrap; align-items: flex-start; }
`;
