// The texts of the <style> elements OHIF's bundle writes into the page, for their
// Content-Security-Policy hashes (`node web/inline_styles.mjs app.bundle.js` prints them
// as a JSON list; web/build_viewer.py hashes them). Measured in headless Chromium under a
// policy without 'unsafe-inline' (tests/test_viewer.py fails on any refused style):
//
// - "": sonner, emotion (react-select) and cornerstone's cursor insert an empty <style>
//   first; the element is checked when inserted, before its text (or CSSOM rules) arrive;
// - sonner's toast styles and Radix's scroll-area style: fixed texts in the bundle;
// - react-remove-scroll-bar's scroll lock, written when a menu or dialog opens: computed
//   from the body's margins and the scrollbar's width; the viewer's document never
//   scrolls, so that width is 0 and the text is the one rendered here.
//
// A pattern that no longer matches (another OHIF version) stops the build.
import { readFileSync } from "node:fs";

const bundle = readFileSync(process.argv[2], "utf8");

function match(pattern, what) {
  const found = pattern.exec(bundle);
  if (!found) {
    console.error(`${process.argv[2]}: ${what} not found; the viewer's style hashes cannot be computed`);
    process.exit(1);
  }
  return found;
}

// A template literal without substitutions, as the browser reads it.
function literal(body, what) {
  if (body.includes("${")) {
    console.error(`${what}: the template literal has substitutions`);
    process.exit(1);
  }
  return (0, eval)("`" + body + "`");
}

const sonner = match(/\(`(:where\(html\[dir="ltr"\]\),:where\(\[data-sonner-toaster\][^`]*)`\)/, "sonner's styles")[1];
const scrollArea = match(/__html: `(\[data-radix-scroll-area-viewport\][^`]*)`/, "Radix's scroll-area style")[1];

const constants = ["zeroRightClassName", "fullWidthClassName", "noScrollbarsClassName", "removedBarSizeVariable",
  "lockAttribute"].map((name) => match(new RegExp(`^var ${name} = '[^']*';$`, "m"), name)[0]).join("\n");
const getStyles = match(/^var getStyles = function \(_a, allowRelative, gapMode, important\) \{\n[\s\S]*?\n\};$/m,
  "react-remove-scroll-bar's getStyles")[0];
const scrollLock = new Function(`${constants}\n${getStyles}\n` +
  "return getStyles({ left: 0, top: 0, right: 0, gap: 0 }, true, 'margin', '!important');")();

console.log(JSON.stringify(["", literal(sonner, "sonner"), literal(scrollArea, "scroll area"), scrollLock]));
