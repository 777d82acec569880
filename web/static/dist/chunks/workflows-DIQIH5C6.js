import{a as y,b as d}from"./chunk-7F3DJIUH.js";import{d as p,e as r,f as i,q as f,s as w,t as u}from"./chunk-WEBVK4HK.js";var c=p.workflowId||null;function $(n){let e=n instanceof y?n.details:[];return`<div class="error" id="form-errors"><b>${r(n.message)}</b>${e.length?`<ul>${e.map(t=>`<li>${r(t)}</li>`).join("")}</ul>`:""}</div>`}async function h(){let{workflows:n}=await d("/workflows");i("#workflow-list").innerHTML=n.map(e=>`<li class="${e.id===c?"on":""}">
    <a href="/workflows/${r(e.id)}" data-wf="${r(e.id)}"><b>${r(e.name||e.id)}</b></a>
    <small class="muted">${r(e.id)} \xB7 v${r(e.latest)} \xB7 ${e.steps} steps \xB7 ${r(e.mode)}</small></li>`).join("")||'<li class="muted">No workflow registered yet.</li>',i("#new-workflow").hidden=!u(),!c&&n.length&&(c=n[0].id)}async function m(n,e){c=n;let t=await d(`/workflows/${encodeURIComponent(n)}`,{query:{version:e}}),s=i("#workflow-detail");s.innerHTML=`<h2>${r(t.name||t.id)} <small class="muted">${r(t.id)}</small></h2>
    <p>${r(t.description||"")}</p>
    <p class="muted">mode ${r(t.mode)} \xB7 ${t.steps} steps \xB7 SLA ${t.sla_seconds??"none"} \xB7
      version <select id="versions">${t.versions.map(o=>`<option ${o===t.version?"selected":""}>${r(o)}</option>`).join("")}</select>
      ${t.tags.map(o=>`<span class="tag">${r(o)}</span>`).join("")}</p>
    <form id="run-form" class="card">
      <h3>Run with inputs</h3>
      <label>Inputs (JSON)<textarea name="inputs" rows="5" spellcheck="false">${r(JSON.stringify(t.inputs||{},null,2))}</textarea></label>
      <label>Priority <select name="priority"><option value="">default</option><option>high</option><option>normal</option><option>low</option></select></label>
      <label>Tags <input name="tags" placeholder="comma,separated"></label>
      <button type="submit" class="primary" ${w()?"":"disabled title='needs the operator role'"}>Run</button>
      <div id="run-errors"></div>
    </form>
    <div id="wf-concurrency"></div>
    <div id="wf-dag"></div>
    <details open><summary>YAML</summary><pre id="wf-yaml">${r(t.yaml)}</pre></details>
    ${u()?`<form id="register-form" class="card"><h3>Register a new version</h3>
      <textarea name="yaml" rows="14" spellcheck="false">${r(t.yaml)}</textarea>
      <button type="submit">Validate and register</button><div id="register-errors"></div></form>`:""}`,i("#versions").addEventListener("change",o=>m(n,o.target.value)),i("#run-form").addEventListener("submit",o=>b(o,t)),i("#register-form")?.addEventListener("submit",o=>g(o,n));let{drawDag:a}=await import("./dag-AXXG62GA.js");a(i("#wf-dag"),t.graph,null),await v(n),await h()}async function v(n){let e=await d(`/workflows/${encodeURIComponent(n)}/concurrency`),t=i("#wf-concurrency");if(!t)return;if(!e.concurrency&&!e.groups.length){t.innerHTML="";return}let s=e.concurrency?`limit ${e.concurrency.limit} per ${e.concurrency.key?`key <code>${r(e.concurrency.key)}</code>`:"workflow"} \xB7 ${r(e.concurrency.strategy||"queue")}`:"";t.innerHTML=`<div class="card" id="concurrency-slots"><h3>Concurrency</h3><p class="muted">${s}</p>
    ${e.groups.length?`<table class="grid slots"><thead><tr><th>Key</th><th>Slots in use</th><th>Waiting</th><th>Runs holding a slot</th></tr></thead><tbody>
    ${e.groups.map(a=>`<tr data-key="${r(a.key)}"><td>${r(a.key||e.workflow)}</td><td>${a.in_use} / ${a.limit}</td><td>${a.waiting}</td>
      <td>${a.active.map(o=>`<a href="/runs/${r(o)}">${r(o)}</a>`).join(" ")}</td></tr>`).join("")}</tbody></table>`:'<p class="muted">no slot in use</p>'}</div>`}async function b(n,e){n.preventDefault();let t=n.target,s=i("#run-errors"),a;try{a=JSON.parse(t.inputs.value||"{}")}catch(l){s.innerHTML=`<div class="error" id="form-errors"><b>inputs: not valid JSON</b> (${r(l.message)})</div>`;return}let o=t.tags.value.split(",").map(l=>l.trim()).filter(Boolean);try{let l=await d("/runs",{method:"POST",body:{workflow:e.id,version:e.version,inputs:a,priority:t.priority.value||null,tags:o}});window.location.href=`/runs/${l.id}`}catch(l){s.innerHTML=$(l)}}async function g(n,e){n.preventDefault();let t=i("#register-errors");try{let s=await d(`/workflows/${encodeURIComponent(e)}`,{method:"PUT",body:{yaml:n.target.yaml.value}});f(`registered ${s.id} version ${s.version}`),await m(s.id,s.version)}catch(s){t.innerHTML=$(s)}}async function T(){await h(),i("#new-workflow").addEventListener("click",()=>{i("#workflow-detail").innerHTML=`<form id="register-form" class="card"><h3>Register a workflow</h3>
      <label>Workflow id <input name="id" required pattern="[a-z0-9][a-z0-9_.-]*"></label>
      <textarea name="yaml" rows="14" spellcheck="false">mode: sequential
steps:
  - id: hello
    plugin: builtin
    method: echo
    params: {message: hi}
</textarea>
      <button type="submit">Validate and register</button><div id="register-errors"></div></form>`,i("#register-form").addEventListener("submit",n=>g(n,n.target.id.value))}),c&&await m(c)}export{T as init};
