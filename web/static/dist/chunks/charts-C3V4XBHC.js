import{a,b,c,d}from"./chunk-BHEUYELN.js";import"./chunk-VC46IEJQ.js";export{b as STATUS_COLORS,c as chartOn,d as dispose,a as echarts};
