"""Keyboard shortcuts for the Label and Compare tabs, passed to ``launch(js=...)``.

Keys click buttons by their elem_id, only while that button is visible and the cursor is not in a text field.
"""

import json

KEYS = {
    "1": "label-left", "2": "label-right", "3": "label-tie", "4": "label-both-bad", "s": "label-skip",
    "u": "label-undo",
}


_KEY_MAP = json.dumps(KEYS)

LAUNCH_JS = """
() => {
  const keys = __KEYS__;
  document.addEventListener("keydown", (event) => {
    const tag = (event.target && event.target.tagName || "").toLowerCase();
    if (tag === "input" || tag === "textarea" || event.target.isContentEditable) return;
    if (event.ctrlKey || event.metaKey || event.altKey) return;
    const id = keys[event.key.toLowerCase()];
    if (!id) return;
    const button = document.getElementById(id);
    if (button && button.offsetParent !== null && !button.disabled) {
      event.preventDefault();
      button.click();
    }
  });
}
""".replace("__KEYS__", _KEY_MAP)
