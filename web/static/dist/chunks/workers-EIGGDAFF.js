import{a,b,c}from"./chunk-CMDSYMHR.js";import"./chunk-42B4AH2Z.js";import"./chunk-XQEXQJRR.js";import"./chunk-VC46IEJQ.js";export{c as init,b as poolText,a as workerUrl};
