// The API reference: this server's own /openapi.json, rendered in the
// browser with nothing but the DOM (no library, no network beyond this
// server). Every operation gets a section (method, path, summary,
// who may call it, parameters, request body, responses); every schema the
// operations name gets one too, linked from where it is used. Text from the
// api is only ever set as text, never parsed as HTML.
"use strict";

const METHODS = ["get", "put", "post", "delete", "patch"];
const status = document.getElementById("status");

// An element with its children: strings become text, null is skipped.
function el(tag, attributes, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attributes || {})) {
    if (value === null || value === undefined) continue;
    if (name === "class") node.className = value;
    else node.setAttribute(name, value);
  }
  for (const child of children.flat(Infinity)) {
    if (child === null || child === undefined || child === false) continue;
    node.append(typeof child === "string" ? document.createTextNode(child) : child);
  }
  return node;
}

// A description's text, with `backticked` words shown as code.
function prose(text) {
  const parts = String(text || "").split("`");
  return parts.map((part, index) => (index % 2 === 1 ? el("code", null, part) : part));
}

// The id of an operation's section: stable, and what the tests look for.
function operationId(method, path) {
  return "op-" + method + "-" + path;
}

function schemaId(name) {
  return "schema-" + name;
}

function refName(ref) {
  return ref.split("/").pop();
}

// A schema as a short type expression: refs are links to their own section,
// so that no schema is ever expanded inside itself.
function typeOf(schema) {
  if (!schema || typeof schema !== "object") return ["any"];
  if (schema.$ref) {
    const name = refName(schema.$ref);
    return [el("a", { href: "#" + schemaId(name) }, name)];
  }
  for (const key of ["oneOf", "anyOf"]) {
    if (Array.isArray(schema[key])) {
      return join(schema[key].map(typeOf), " | ");
    }
  }
  if (Array.isArray(schema.allOf)) return join(schema.allOf.map(typeOf), " & ");
  if (Array.isArray(schema.enum)) {
    return join(schema.enum.map((value) => [el("code", null, JSON.stringify(value))]), " | ");
  }
  let types = Array.isArray(schema.type) ? schema.type : [schema.type || (schema.properties ? "object" : "any")];
  const shown = types.map((type) => {
    if (type === "array") return ["[", ...typeOf(schema.items), "]"];
    if (type === "object" && schema.properties) return ["object {", ...join(Object.keys(schema.properties).map((key) => [key]), ", "), "}"];
    if (type === "object" && schema.additionalProperties && typeof schema.additionalProperties === "object") {
      return ["map of ", ...typeOf(schema.additionalProperties)];
    }
    return [schema.format ? type + " (" + schema.format + ")" : type];
  });
  return join(shown, " | ");
}

function join(lists, separator) {
  const out = [];
  lists.forEach((list, index) => {
    if (index > 0) out.push(separator);
    out.push(...list);
  });
  return out;
}

// A schema's own entry among the document's schemas, if it is a ref.
function resolve(api, schema) {
  if (!schema || !schema.$ref) return schema;
  const schemas = (api.components && api.components.schemas) || {};
  return schemas[refName(schema.$ref)] || null;
}

// The fields of an object schema, as a table (a ref's own fields, named
// and linked to its entry; the refs inside stay links); anything else as
// its type.
function fields(api, schema) {
  const resolved = resolve(api, schema);
  if (!resolved || !resolved.properties) {
    return el("p", null, "Type: ", ...typeOf(schema));
  }
  const named = schema.$ref ? el("p", null, "Type: ", ...typeOf(schema)) : null;
  return el("div", null, named, table(resolved));
}

function table(resolved) {
  const required = new Set(resolved.required || []);
  const rows = Object.entries(resolved.properties).map(([name, property]) =>
    el("tr", null,
      el("td", null, el("code", null, name)),
      el("td", null, ...typeOf(property)),
      el("td", null, required.has(name) ? "required" : "optional"),
      el("td", null, ...prose(property.description || ""))));
  return el("div", { class: "scroll" },
    el("table", null,
      el("thead", null, el("tr", null, el("th", null, "field"), el("th", null, "type"), el("th", null, ""), el("th", null, "what"))),
      el("tbody", null, rows)));
}

// Who may call an operation, in the words of the api's schemes.
function auth(api, operation) {
  const schemes = (api.components && api.components.securitySchemes) || {};
  const requirements = operation.security;
  if (!requirements || requirements.length === 0) return el("p", { class: "auth" }, "Anyone may call it: no credential.");
  const ways = requirements.map((requirement) => {
    const names = Object.keys(requirement);
    if (names.length === 0) return ["no credential"];
    return join(names.map((name) => {
      const scheme = schemes[name] || {};
      const how = scheme.type === "http" ? "bearer " : scheme.in ? scheme.in + " " + (scheme.name || "") + ": " : "";
      return [el("code", null, name), " (", how, scheme.description || "", ")"];
    }), " and ");
  });
  return el("p", { class: "auth" }, "Who may call it: ", ...join(ways, "; or "), ".");
}

function parameters(api, operation, pathItem) {
  const list = [...(pathItem.parameters || []), ...(operation.parameters || [])];
  if (list.length === 0) return null;
  const rows = list.map((parameter) =>
    el("tr", null,
      el("td", null, el("code", null, parameter.name)),
      el("td", null, parameter.in),
      el("td", null, ...typeOf(parameter.schema)),
      el("td", null, parameter.required ? "required" : "optional"),
      el("td", null, ...prose(parameter.description || ""))));
  return [el("h4", null, "Parameters"),
    el("div", { class: "scroll" },
      el("table", null,
        el("thead", null, el("tr", null, el("th", null, "name"), el("th", null, "in"), el("th", null, "type"), el("th", null, ""), el("th", null, "what"))),
        el("tbody", null, rows)))];
}

function content(api, body) {
  const entries = Object.entries((body && body.content) || {});
  return entries.map(([type, media]) =>
    el("div", null, el("p", { class: "muted" }, el("code", null, type)), media.schema ? fields(api, media.schema) : null));
}

function requestBody(api, operation) {
  const body = operation.requestBody;
  if (!body) return null;
  return [el("h4", null, "Request body", body.required ? " (required)" : " (optional)"),
    body.description ? el("p", null, ...prose(body.description)) : null,
    content(api, body)];
}

function responses(api, operation) {
  const entries = Object.entries(operation.responses || {});
  if (entries.length === 0) return null;
  return [el("h4", null, "Responses"),
    entries.map(([code, response]) => {
      const resolved = response.$ref ? (api.components.responses || {})[refName(response.$ref)] || {} : response;
      return el("div", { class: "response" },
        el("p", null, el("strong", null, code), " ", ...prose(resolved.description || "")),
        content(api, resolved));
    })];
}

function operationSection(api, path, method, operation, pathItem) {
  return el("section", {
    class: "operation",
    id: operationId(method, path),
    "data-method": method.toUpperCase(),
    "data-path": path,
  },
  el("h3", null, el("span", { class: "method " + method }, method.toUpperCase()), el("code", null, path)),
  operation.summary ? el("p", null, el("strong", null, ...prose(operation.summary))) : null,
  operation.description && operation.description !== operation.summary ? el("p", null, ...prose(operation.description)) : null,
  auth(api, operation),
  parameters(api, operation, pathItem),
  requestBody(api, operation),
  responses(api, operation));
}

function render(api) {
  if (api.info) {
    if (api.info.title) document.title = api.info.title + ": API reference (" + (api.info.version || "") + ")";
    document.getElementById("description").replaceChildren(...prose(api.info.description || ""));
  }
  const byTag = new Map();
  const sections = [];
  for (const [path, pathItem] of Object.entries(api.paths || {})) {
    for (const method of METHODS) {
      const operation = pathItem[method];
      if (!operation) continue;
      const tag = (operation.tags && operation.tags[0]) || "other";
      if (!byTag.has(tag)) byTag.set(tag, []);
      byTag.get(tag).push({ path, method, operation, pathItem });
    }
  }
  const toc = document.getElementById("toc");
  const operations = document.getElementById("operations");
  const groups = [];
  for (const [tag, list] of byTag) {
    const entries = el("div", { class: "group" }, el("h2", null, tag),
      el("ul", null, list.map(({ path, method, operation }) =>
        el("li", { "data-for": operationId(method, path) },
          el("a", { href: "#" + operationId(method, path) }, method.toUpperCase() + " " + path),
          operation.summary ? el("span", { class: "muted" }, " — ", ...prose(operation.summary)) : null))));
    toc.append(entries);
    const group = el("div", { class: "group" }, el("h2", null, tag));
    for (const { path, method, operation, pathItem } of list) {
      const section = operationSection(api, path, method, operation, pathItem);
      sections.push(section);
      group.append(section);
    }
    operations.append(group);
    groups.push(entries, group);
  }
  const schemas = (api.components && api.components.schemas) || {};
  const names = Object.keys(schemas).sort();
  const schemaList = document.getElementById("schemas");
  for (const name of names) {
    const schema = schemas[name];
    schemaList.append(el("section", { class: "schema", id: schemaId(name) },
      el("h3", null, el("code", null, name)),
      schema.description ? el("p", null, ...prose(schema.description)) : null,
      fields(api, schema)));
  }
  document.getElementById("schemas-title").hidden = names.length === 0;
  document.getElementById("contents").hidden = false;
  const filter = document.getElementById("filter");
  const apply = () => {
    const words = filter.value.trim().toLowerCase();
    for (const section of sections) {
      const shown = words === "" || section.textContent.toLowerCase().includes(words);
      section.hidden = !shown;
      const entry = toc.querySelector('[data-for="' + CSS.escape(section.id) + '"]');
      if (entry) entry.hidden = !shown;
    }
    // A tag none of whose operations is shown is not shown either.
    for (const group of groups) {
      group.hidden = !Array.from(group.querySelectorAll("li, section.operation")).some((item) => !item.hidden);
    }
  };
  filter.addEventListener("input", apply);
  // `/docs?q=refund` opens the reference filtered.
  const asked = new URLSearchParams(location.search).get("q");
  if (asked) {
    filter.value = asked;
    apply();
  }
  status.textContent = sections.length + " operations.";
  status.dataset.operations = String(sections.length);
  if (location.hash) {
    const target = document.getElementById(decodeURIComponent(location.hash.slice(1)));
    if (target) target.scrollIntoView();
  }
}

async function load() {
  try {
    const response = await fetch("/openapi.json", { headers: { Accept: "application/json" } });
    if (!response.ok) throw new Error("the server answered " + response.status);
    render(await response.json());
  } catch (error) {
    status.textContent = "The API api could not be loaded: " + error.message + ". Reload to try again.";
  }
}

load();
