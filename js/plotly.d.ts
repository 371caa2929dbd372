// Minimal typing for the partial plotly bundle (scatter + scattergl); we use a small surface.
declare module "plotly.js-gl2d-dist-min" {
  const Plotly: {
    newPlot(el: HTMLElement, data: any[], layout?: any, config?: any): Promise<any>;
    react(el: HTMLElement, data: any[], layout?: any, config?: any): Promise<any>;
    restyle(el: HTMLElement, update: any, traces?: number | number[]): Promise<any>;
    relayout(el: HTMLElement, update: any): Promise<any>;
    update(el: HTMLElement, traceUpdate: any, layoutUpdate: any, traces?: number | number[]): Promise<any>;
    purge(el: HTMLElement): void;
    Plots: { resize(el: HTMLElement): void };
  };
  export default Plotly;
}
