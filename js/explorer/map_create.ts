// The choice of the map's engine: regl-scatterplot by default (measured in benchmarks/explorer.py),
// plotly on request (`Explorer(..., map_engine="plotly")`) or where WebGL is missing (plotly then
// falls back to an SVG scatter).
import { MapHandlers, MapView, webglOK } from "./map";
import { PlotlyMap } from "./map_plotly";
import { ReglMap } from "./map_regl";

export function createMap(parent: HTMLElement, h: MapHandlers, engine: string): MapView {
  return engine !== "plotly" && webglOK() ? new ReglMap(parent, h) : new PlotlyMap(parent, h);
}
