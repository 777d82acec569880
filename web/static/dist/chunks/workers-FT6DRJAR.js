import{a,b,c}from"./chunk-OFSBOBCK.js";import"./chunk-7F3DJIUH.js";import"./chunk-WEBVK4HK.js";export{c as init,b as poolText,a as workerUrl};
