// The dataset page's controls (no inline scripts: the pages' Content-Security-Policy
// allows scripts from this site only).
document.addEventListener("input", (event) => {
  // A slider's number follows it as it moves (the image follows through htmx).
  const slider = event.target.closest("input[type=range]");
  if (slider && slider.nextElementSibling && slider.nextElementSibling.tagName === "OUTPUT") {
    slider.nextElementSibling.value = slider.value;
  }
});
document.addEventListener("change", (event) => {
  // Choosing a field of a structured array shows its plot.
  const select = event.target.closest("select[data-submit]");
  if (select) {
    select.form.submit();
  }
});
