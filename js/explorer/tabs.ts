// Tabs beside the map (members, audit, selected error, rounds, regression tests): one pane shown
// at a time, so the explorer keeps a bounded height. WAI-ARIA tabs: a tablist of buttons
// (left/right arrows move between them) and one tabpanel each.

let next = 0;

export class Tabs {
  root: HTMLElement;
  private list: HTMLElement;
  private tabs = new Map<string, HTMLButtonElement>();
  private panels = new Map<string, HTMLElement>();
  current = "";

  constructor(parent: HTMLElement, items: [string, string][], label: string, private onShow: (key: string) => void = () => {}) {
    this.root = document.createElement("div");
    this.root.className = "dfx-tabs";
    this.list = document.createElement("div");
    this.list.className = "dfx-tablist";
    this.list.setAttribute("role", "tablist");
    this.list.setAttribute("aria-label", label);
    this.root.append(this.list);
    const id = `dfx-tabs-${next++}`;
    for (const [key, title] of items) {
      const tab = document.createElement("button");
      tab.type = "button";
      tab.id = `${id}-${key}-tab`;
      tab.textContent = title;
      tab.setAttribute("role", "tab");
      tab.dataset.tab = key;
      tab.addEventListener("click", () => this.show(key));
      const panel = document.createElement("div");
      panel.className = "dfx-tabpanel";
      panel.id = `${id}-${key}`;
      panel.setAttribute("role", "tabpanel");
      panel.setAttribute("aria-labelledby", tab.id);
      tab.setAttribute("aria-controls", panel.id);
      this.tabs.set(key, tab);
      this.panels.set(key, panel);
      this.list.append(tab);
      this.root.append(panel);
    }
    this.list.addEventListener("keydown", (e) => this.key(e));
    parent.append(this.root);
    this.show(items[0][0]);
  }

  panel(key: string): HTMLElement { return this.panels.get(key) as HTMLElement; }

  /** Show pane `key` (and mark its tab). */
  show(key: string): void {
    if (!this.tabs.has(key)) return;
    this.current = key;
    for (const [k, tab] of this.tabs) {
      const on = k === key;
      tab.setAttribute("aria-selected", String(on));
      tab.tabIndex = on ? 0 : -1;
      (this.panels.get(k) as HTMLElement).hidden = !on;
    }
    this.root.dataset.tab = key;
    this.onShow(key);
  }

  private key(e: KeyboardEvent): void {
    const keys = [...this.tabs.keys()];
    const at = keys.indexOf(this.current);
    const to = e.key === "ArrowRight" ? (at + 1) % keys.length : e.key === "ArrowLeft" ? (at + keys.length - 1) % keys.length
      : e.key === "Home" ? 0 : e.key === "End" ? keys.length - 1 : -1;
    if (to < 0) return;
    e.preventDefault();
    this.show(keys[to]);
    this.tabs.get(keys[to])?.focus();
  }
}
