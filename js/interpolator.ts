export default { render({ el }: { el: HTMLElement }) { el.textContent = "interpolator"; } };
