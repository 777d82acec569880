import{a as g,b as d}from"./chunk-7F3DJIUH.js";import{d as u,e as i,f as o,q as f,s as w,t as c}from"./chunk-WEBVK4HK.js";var l=u.workflowId||null;function v(t){let r=t instanceof g?t.details:[];return`<div class="error" id="form-errors"><b>${i(t.message)}</b>${r.length?`<ul>${r.map(e=>`<li>${i(e)}</li>`).join("")}</ul>`:""}</div>`}async function $(){let{workflows:t}=await d("/workflows");o("#workflow-list").innerHTML=t.map(r=>`<li class="${r.id===l?"on":""}">
    <a href="/workflows/${i(r.id)}" data-wf="${i(r.id)}"><b>${i(r.name||r.id)}</b></a>
    <small class="muted">${i(r.id)} \xB7 v${i(r.latest)} \xB7 ${r.steps} steps \xB7 ${i(r.mode)}</small></li>`).join("")||'<li class="muted">No workflow registered yet.</li>',o("#new-workflow").hidden=!c(),!l&&t.length&&(l=t[0].id)}async function p(t,r){l=t;let e=await d(`/workflows/${encodeURIComponent(t)}`,{query:{version:r}}),a=o("#workflow-detail");a.innerHTML=`<h2>${i(e.name||e.id)} <small class="muted">${i(e.id)}</small></h2>
    <p>${i(e.description||"")}</p>
    <p class="muted">mode ${i(e.mode)} \xB7 ${e.steps} steps \xB7 SLA ${e.sla_seconds??"none"} \xB7
      version <select id="versions">${e.versions.map(s=>`<option ${s===e.version?"selected":""}>${i(s)}</option>`).join("")}</select>
      ${e.tags.map(s=>`<span class="tag">${i(s)}</span>`).join("")}</p>
    <form id="run-form" class="card">
      <h3>Run with inputs</h3>
      <label>Inputs (JSON)<textarea name="inputs" rows="5" spellcheck="false">${i(JSON.stringify(e.inputs||{},null,2))}</textarea></label>
      <label>Priority <select name="priority"><option value="">default</option><option>high</option><option>normal</option><option>low</option></select></label>
      <label>Tags <input name="tags" placeholder="comma,separated"></label>
      <button type="submit" class="primary" ${w()?"":"disabled title='needs the operator role'"}>Run</button>
      <div id="run-errors"></div>
    </form>
    <div id="wf-dag"></div>
    <details open><summary>YAML</summary><pre id="wf-yaml">${i(e.yaml)}</pre></details>
    ${c()?`<form id="register-form" class="card"><h3>Register a new version</h3>
      <textarea name="yaml" rows="14" spellcheck="false">${i(e.yaml)}</textarea>
      <button type="submit">Validate and register</button><div id="register-errors"></div></form>`:""}`,o("#versions").addEventListener("change",s=>p(t,s.target.value)),o("#run-form").addEventListener("submit",s=>b(s,e)),o("#register-form")?.addEventListener("submit",s=>h(s,t));let{drawDag:m}=await import("./dag-AXXG62GA.js");m(o("#wf-dag"),e.graph,null),await $()}async function b(t,r){t.preventDefault();let e=t.target,a=o("#run-errors"),m;try{m=JSON.parse(e.inputs.value||"{}")}catch(n){a.innerHTML=`<div class="error" id="form-errors"><b>inputs: not valid JSON</b> (${i(n.message)})</div>`;return}let s=e.tags.value.split(",").map(n=>n.trim()).filter(Boolean);try{let n=await d("/runs",{method:"POST",body:{workflow:r.id,version:r.version,inputs:m,priority:e.priority.value||null,tags:s}});window.location.href=`/runs/${n.id}`}catch(n){a.innerHTML=v(n)}}async function h(t,r){t.preventDefault();let e=o("#register-errors");try{let a=await d(`/workflows/${encodeURIComponent(r)}`,{method:"PUT",body:{yaml:t.target.yaml.value}});f(`registered ${a.id} version ${a.version}`),await p(a.id,a.version)}catch(a){e.innerHTML=v(a)}}async function L(){await $(),o("#new-workflow").addEventListener("click",()=>{o("#workflow-detail").innerHTML=`<form id="register-form" class="card"><h3>Register a workflow</h3>
      <label>Workflow id <input name="id" required pattern="[a-z0-9][a-z0-9_.-]*"></label>
      <textarea name="yaml" rows="14" spellcheck="false">mode: sequential
steps:
  - id: hello
    plugin: builtin
    method: echo
    params: {message: hi}
</textarea>
      <button type="submit">Validate and register</button><div id="register-errors"></div></form>`,o("#register-form").addEventListener("submit",t=>h(t,t.target.id.value))}),l&&await p(l)}export{L as init};
