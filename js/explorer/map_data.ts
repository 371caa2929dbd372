// What every map engine and colouring reads: the errors' arrays and the fixed greys (its own
// module, so the map and its colourings import it without importing each other).
import { Arr } from "../common/codec";

export const GREY = "#b8b8b8";
export const BACKGROUND = { color: "#7f7f7f", opacity: 0.15 };

export type MapData = {
  xy: Arr; region: Arr; labels: Arr | null; confidence: Arr | null; fixed: Arr | null; validity: Arr | null;
  background: Arr | null; backgroundLabel: string; colors: Map<number, string>; classes: string[];
  layout: string; // which projection the positions come from: a new one resets pan and zoom
};
