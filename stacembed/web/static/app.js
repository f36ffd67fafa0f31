// stacembed explore: quicklook overlays, cluster/change layers, click -> similar chips (see stacembed/web/server.py).
"use strict";
(function () {
  const map = L.map("map", { zoomControl: true, attributionControl: false }).setView([0, 0], 2);
  // Panes: quicklooks and outlines (overlayPane, 400) < cluster/change maps < similar chips.
  map.createPane("analysis").style.zIndex = 410;
  map.createPane("similar").style.zIndex = 420;
  const quicklooks = L.layerGroup().addTo(map);
  const outlines = L.layerGroup().addTo(map);
  const results = L.layerGroup().addTo(map);
  const control = L.control.layers(null, { "Quicklooks": quicklooks, "Item outlines": outlines,
                                           "Similar chips": results }, { collapsed: false }).addTo(map);
  const statusEl = document.getElementById("status");
  const list = document.getElementById("results");
  const kInput = document.getElementById("k");
  const state = { map: map, items: [], overlays: [], layers: {}, result: null, ready: null };
  window.stacembedExplore = state;

  function setStatus(text, error) {
    statusEl.textContent = text;
    statusEl.classList.toggle("error", Boolean(error));
  }

  // [west, south, east, north] (lon/lat) as Leaflet bounds. The server's images are on a Web
  // Mercator grid, which Leaflet stretches linearly between these: placed exactly.
  function latLngBounds([w, s, e, n]) {
    return L.latLngBounds([s, w], [n, e]);
  }

  async function getJSON(url) {
    const response = await fetch(url);
    const body = await response.json();
    if (!response.ok) throw new Error(body.error || response.statusText);
    return body;
  }

  async function loadItems() {
    const collection = await getJSON("/api/items");
    state.items = collection.features;
    const bounds = L.latLngBounds([]);  // a copy: extend() moves the corners of the bounds it starts from
    for (const feature of collection.features) {
      const box = latLngBounds(feature.properties.bbox);
      bounds.extend(box);
      L.rectangle(box, { color: "#555", weight: 1, fill: false, interactive: false }).addTo(outlines);
      const quicklook = feature.properties.quicklook;
      if (quicklook) {
        const overlay = L.imageOverlay(quicklook.image, latLngBounds(quicklook.bounds),
                                       { opacity: 0.9, alt: feature.properties.id });
        overlay.addTo(quicklooks);
        state.overlays.push(overlay);
      }
    }
    if (bounds.isValid()) map.fitBounds(bounds);
    const note = await loadLayers();
    setStatus(`${collection.features.length} items${note}. Click the map to search.`);
    document.body.dataset.state = "ready";
  }

  // Cluster and change maps (stacembed cluster / change), one group each, off until ticked.
  async function loadLayers() {
    let layers = [];
    try {
      layers = await getJSON("/api/layers");
    } catch (error) {
      return ` (no cluster/change layers: ${error.message})`;
    }
    for (const layer of layers) {
      let group = state.layers[layer.label];
      if (!group) {
        group = state.layers[layer.label] = L.layerGroup();
        control.addOverlay(group, layer.label);
      }
      L.imageOverlay(layer.image, latLngBounds(layer.bounds), {
        opacity: 0.75, pane: "analysis", alt: `${layer.collection}/${layer.id}`, className: `stacembed-${layer.kind}`,
      }).addTo(group);
    }
    const groups = Object.keys(state.layers);
    return groups.length ? `, layers: ${groups.join(", ")}` : "";
  }

  function showResult(collection) {
    results.clearLayers();
    list.replaceChildren();
    state.result = collection;
    const layers = [];
    for (const feature of collection.features) {
      const p = feature.properties;
      const layer = L.geoJSON(feature, {
        pane: "similar",
        style: { color: p.rank === 1 ? "#d7191c" : "#ffd400", weight: p.rank === 1 ? 3 : 2, fillOpacity: 0.15 },
      }).bindTooltip(`#${p.rank} ${p.similarity.toFixed(3)}`);
      layer.addTo(results);
      layers.push(layer);
      const li = document.createElement("li");
      li.dataset.rank = p.rank;
      li.dataset.item = p.item;
      li.dataset.row = p.chip_row;
      li.dataset.col = p.chip_col;
      const rank = document.createElement("span");
      rank.className = "rank";
      rank.textContent = `${p.rank}. `;
      const sim = document.createElement("span");
      sim.className = "sim";
      sim.textContent = p.similarity.toFixed(4);
      const where = document.createElement("div");
      where.className = "where";
      where.textContent = `row ${p.chip_row}, col ${p.chip_col}` + (p.datetime ? ` · ${p.datetime.slice(0, 10)}` : "");
      li.append(rank, document.createTextNode(p.item), sim, where);
      li.addEventListener("click", () => {
        for (const other of list.children) other.classList.remove("selected");
        li.classList.add("selected");
        map.fitBounds(layer.getBounds(), { maxZoom: map.getZoom() + 3 });
        layer.openTooltip();
      });
      list.append(li);
    }
    const chips = (collection.query && collection.query.chips) || [];
    setStatus(`${collection.features.length} chips most like ${chips.join(", ") || "the query"}.`);
    document.body.dataset.state = "result";
  }

  map.on("click", async (event) => {
    const lon = L.Util.wrapNum(event.latlng.lng, [-180, 180], true);
    const lat = event.latlng.lat;
    const k = Math.max(1, Math.min(200, parseInt(kInput.value, 10) || 10));
    document.body.dataset.state = "searching";
    setStatus(`Searching at ${lon.toFixed(5)}, ${lat.toFixed(5)}…`);
    try {
      showResult(await getJSON(`/api/similar?lon=${lon}&lat=${lat}&k=${k}`));
    } catch (error) {
      results.clearLayers();
      list.replaceChildren();
      setStatus(error.message, true);
      document.body.dataset.state = "error";
    }
  });

  state.ready = loadItems().catch((error) => {
    setStatus(`Cannot load items: ${error.message}`, true);
    document.body.dataset.state = "error";
  });
})();
